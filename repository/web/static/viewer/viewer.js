// MyoVault viewer: NiiVue (installed from npm by `make install`) over authorised, no-store
// image endpoints. Each [data-viewer] element holds its own JSON (a <script type=
// "application/json">, so the page needs no inline script under the CSP). The single-visit page
// exposes window.myovaultViewer = {nv, visitId, labelsDerivativeId, labelNames} and dispatches
// "myovault:viewer-ready"; a "myovault:labels-saved" event reloads the overlay and the metrics.
import { Niivue, SLICE_TYPE } from "../vendor/niivue/niivue.js";

const SLICE_TYPES = {
  axial: SLICE_TYPE.AXIAL,
  coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
  multiplanar: SLICE_TYPE.MULTIPLANAR,
  render: SLICE_TYPE.RENDER,
};
const METRIC_COLUMNS = ["volume_ml", "ff_mean", "t2w_mean", "max_csa_cm2"];
const SVG_NS = "http://www.w3.org/2000/svg";

function labelColormap(data, highlight) {
  const cmap = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  const ids = Object.keys(data.labelNames).map(Number).sort((a, b) => a - b);
  for (const id of ids) {
    const [r, g, b] = data.palette[id] || [255, 255, 255];
    cmap.R.push(r);
    cmap.G.push(g);
    cmap.B.push(b);
    cmap.A.push(highlight && highlight !== id ? 40 : 255);
    cmap.I.push(id);
    cmap.labels.push(data.labelNames[id]);
  }
  return cmap;
}

function fmt(value, digits = 1) {
  return value === undefined || value === null || Number.isNaN(value) ? "–" : Number(value).toFixed(digits);
}

class VisitViewer {
  constructor(root, data) {
    this.root = root;
    this.data = data;
    this.q = (sel) => root.querySelector(sel);
    this.base = data.series[0] ? { type: "series", ...data.series[0] } : data.maps[0] ? { type: "map", ...data.maps[0] } : null;
    this.labels = data.labels.find((x) => x.id === data.labelsDerivativeId) || null;
    this.labelOpacity = 0.5;
    this.highlight = 0;
    this.frame = 0;
    // the metrics table sits beside the viewer (one per page, single-visit page only)
    this.table = document.querySelector("[data-role=metrics]");
  }

  async start() {
    const canvas = this.q("canvas");
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      isColorbar: true,
      dragAndDropEnabled: false,
      show3Dcrosshair: true,
      isRadiologicalConvention: true,
      isNearestInterpolation: true, // show voxels as they are: labels and quantitative values
      crosshairWidth: 1,
      crosshairWidthUnit: "mm",
      logLevel: "error",
      loadingText: "loading…",
    });
    await this.nv.attachToCanvas(canvas);
    this.nv.onLocationChange = (loc) => this.showLocation(loc.vox ? this.valuesAt(loc.vox) : null);
    canvas.addEventListener("mousemove", (event) => this.hover(event));
    this.bindControls();
    await this.load();
    return this;
  }

  bindControls() {
    const baseSelect = this.q("[data-role=base]");
    if (baseSelect) {
      baseSelect.addEventListener("change", () => {
        const [type, id] = baseSelect.value.split(":");
        const list = type === "series" ? this.data.series : this.data.maps;
        const item = list.find((x) => String(x.id) === id);
        if (item) {
          this.base = { type, ...item };
          this.frame = 0;
          this.load();
        }
      });
    }
    const labelsSelect = this.q("[data-role=labels]");
    if (labelsSelect) {
      labelsSelect.addEventListener("change", () => {
        this.labels = this.data.labels.find((x) => String(x.id) === labelsSelect.value) || null;
        this.load().then(() => this.reloadMetrics());
      });
    }
    const opacity = this.q("[data-role=opacity]");
    if (opacity) {
      opacity.addEventListener("input", () => {
        this.labelOpacity = Number(opacity.value) / 100;
        if (this.labelIndex() !== null) this.nv.setOpacity(this.labelIndex(), this.labelOpacity);
      });
    }
    for (const button of this.root.querySelectorAll("[data-slice]")) {
      button.addEventListener("click", () => {
        this.nv.setSliceType(SLICE_TYPES[button.dataset.slice]);
        for (const b of this.root.querySelectorAll("[data-slice]")) b.setAttribute("aria-pressed", String(b === button));
      });
    }
    const frame = this.q("[data-role=frame]");
    if (frame) {
      frame.addEventListener("change", () => {
        const vol = this.nv.volumes[0];
        if (!vol) return;
        this.frame = Math.max(0, Math.min(Number(frame.value) || 0, (vol.nFrame4D || 1) - 1));
        this.nv.setFrame4D(vol.id, this.frame);
      });
    }
    const wmin = this.q("[data-role=wmin]");
    const wmax = this.q("[data-role=wmax]");
    const applyWindow = () => {
      const vol = this.nv.volumes[0];
      const lo = Number(wmin.value);
      const hi = Number(wmax.value);
      if (!vol || !Number.isFinite(lo) || !Number.isFinite(hi) || hi <= lo) return;
      vol.cal_min = lo;
      vol.cal_max = hi;
      this.nv.updateGLVolume();
    };
    if (wmin && wmax) {
      wmin.addEventListener("change", applyWindow);
      wmax.addEventListener("change", applyWindow);
      this.nv.onIntensityChange = (vol) => {
        if (vol === this.nv.volumes[0]) this.showWindow();
      };
    }
    const auto = this.q("[data-role=wauto]");
    if (auto) {
      auto.addEventListener("click", () => {
        const vol = this.nv.volumes[0];
        if (!vol) return;
        const range = this.base && this.base.range;
        vol.cal_min = range ? range[0] : vol.robust_min;
        vol.cal_max = range ? range[1] : vol.robust_max;
        this.nv.updateGLVolume();
        this.showWindow();
      });
    }
    const table = this.table;
    if (table) {
      table.addEventListener("click", (event) => {
        const row = event.target.closest("tr[data-label]");
        if (row) this.highlightLabel(Number(row.dataset.label));
      });
      table.addEventListener("keydown", (event) => {
        const row = event.target.closest("tr[data-label]");
        if (row && (event.key === "Enter" || event.key === " ")) {
          event.preventDefault();
          this.highlightLabel(Number(row.dataset.label));
        }
      });
    }
  }

  labelIndex() {
    return this.labels && this.nv.volumes.length > 1 ? this.nv.volumes.length - 1 : null;
  }

  async load() {
    if (!this.base) return;
    const list = [];
    const baseOpts = { url: this.base.url, name: `base-${this.base.type}-${this.base.id}.nii.gz` };
    if (this.base.type === "map") {
      baseOpts.colormap = this.base.colormap;
      if (this.base.range) {
        baseOpts.cal_min = this.base.range[0];
        baseOpts.cal_max = this.base.range[1];
      }
    } else {
      baseOpts.colormap = "gray";
    }
    list.push(baseOpts);
    if (this.labels) list.push({ url: this.labels.url, name: `labels-${this.labels.id}.nii.gz`, opacity: this.labelOpacity });
    this.root.dataset.state = "loading";
    await this.nv.loadVolumes(list);
    const base = this.nv.volumes[0];
    base.colorbarVisible = this.base.type === "map";
    if (this.base.type === "map" && this.base.range) {
      base.cal_min = this.base.range[0];
      base.cal_max = this.base.range[1];
    }
    const li = this.labelIndex();
    if (li !== null) {
      const lv = this.nv.volumes[li];
      lv.colorbarVisible = false;
      lv.setColormapLabel(labelColormap(this.data, this.highlight));
      this.nv.setOpacity(li, this.labelOpacity);
    }
    this.nv.updateGLVolume();
    const frame = this.q("[data-role=frame]");
    if (frame) {
      const n = base.nFrame4D || 1;
      frame.max = String(n - 1);
      frame.value = "0";
      frame.disabled = n < 2;
      const count = this.q("[data-role=frame-count]");
      if (count) count.textContent = n > 1 ? `of ${n} (echoes / volumes)` : "single volume";
    }
    this.showWindow();
    this.showColorbarCaption();
    this.root.dataset.state = "ready";
    this.root.dataset.base = `${this.base.type}:${this.base.id}`;
    this.root.dataset.labels = this.labels ? String(this.labels.id) : "";
  }

  showWindow() {
    const vol = this.nv.volumes[0];
    const wmin = this.q("[data-role=wmin]");
    const wmax = this.q("[data-role=wmax]");
    if (!vol || !wmin || !wmax) return;
    wmin.value = fmt(vol.cal_min, 1);
    wmax.value = fmt(vol.cal_max, 1);
  }

  showColorbarCaption() {
    const caption = this.q("[data-role=colorbar]");
    if (!caption) return;
    if (this.base && this.base.type === "map") {
      const vol = this.nv.volumes[0];
      caption.textContent = `Colour bar: ${this.base.name.split(" · ")[0]}, ${fmt(vol.cal_min)} to ${fmt(vol.cal_max)} ${this.base.unit} (colour map ${this.base.colormap})`;
    } else {
      caption.textContent = "Grey scale: signal intensity (arbitrary units); drag with the right mouse button or set the window below.";
    }
  }

  voxelOf(volume, frac) {
    // fraction of the RAS field of view → RAS voxel (what getValue reads)
    const dims = volume.dimsRAS;
    return [0, 1, 2].map((i) => Math.max(0, Math.min(Math.round(frac[i] * dims[i + 1] - 0.5), dims[i + 1] - 1)));
  }

  valuesAt(vox) {
    const out = { value: null, label: 0 };
    const base = this.nv.volumes[0];
    if (!base) return out;
    const frac = this.nv.vox2frac(vox, 0);
    const [x, y, z] = this.voxelOf(base, frac);
    out.value = base.getValue(x, y, z, this.frame);
    const li = this.labelIndex();
    if (li !== null) {
      const lv = this.nv.volumes[li];
      const [lx, ly, lz] = this.voxelOf(lv, frac);
      out.label = Math.round(lv.getValue(lx, ly, lz));
    }
    return out;
  }

  hover(event) {
    const pos = this.nv.getNoPaddingNoBorderCanvasRelativeMousePosition(event, this.nv.canvas);
    if (!pos || !this.nv.volumes.length) return;
    const dpr = this.nv.uiData.dpr || window.devicePixelRatio || 1;
    const frac = this.nv.canvasPos2frac([pos.x * dpr, pos.y * dpr]);
    if (!frac || frac[0] < 0) {
      this.showLocation(null);
      return;
    }
    this.showLocation(this.valuesAt(this.voxelOf(this.nv.volumes[0], frac)));
  }

  showLocation(found) {
    const out = this.q("[data-role=hover]");
    if (!out) return;
    if (!found) {
      out.textContent = "Point at the image to read the muscle and the voxel value.";
      return;
    }
    const unit = this.base.type === "map" ? ` ${this.base.unit}` : " (signal, a.u.)";
    const name = found.label ? this.data.labelNames[found.label] || `label ${found.label}` : "no muscle";
    out.textContent = `${name} · ${this.base.name.split(" (")[0]}: ${fmt(found.value, 2)}${unit}`;
    out.dataset.label = String(found.label || 0);
  }

  highlightLabel(id) {
    this.highlight = this.highlight === id ? 0 : id;
    for (const row of this.table ? this.table.querySelectorAll("tr[data-label]") : []) {
      row.classList.toggle("selected", Number(row.dataset.label) === this.highlight);
      row.setAttribute("aria-selected", String(Number(row.dataset.label) === this.highlight));
    }
    const li = this.labelIndex();
    if (li === null) return;
    const lv = this.nv.volumes[li];
    lv.setColormapLabel(labelColormap(this.data, this.highlight));
    if (this.highlight) {
      // move the crosshair to the muscle's centroid so it is on screen in every view
      const dims = lv.dimsRAS; // getValue and frac2vox work in RAS voxel coordinates
      const [nx, ny, nz] = [dims[1], dims[2], dims[3]];
      let sx = 0, sy = 0, sz = 0, n = 0;
      for (let z = 0; z < nz; z++) for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) {
        if (Math.round(lv.getValue(x, y, z)) === this.highlight) {
          sx += x; sy += y; sz += z; n++;
        }
      }
      if (n) {
        this.nv.scene.crosshairPos = this.nv.vox2frac([sx / n, sy / n, Math.round(sz / n)], li);
        this.nv.createOnLocationChange();
      }
    }
    this.nv.updateGLVolume();
    const status = this.q("[data-role=highlight]");
    if (status) status.textContent = this.highlight ? `Highlighted: ${this.data.labelNames[this.highlight]}` : "";
    this.root.dataset.highlight = String(this.highlight);
  }

  async reloadMetrics() {
    if (!this.data.metricsUrl || !this.labels) return;
    const response = await fetch(`${this.data.metricsUrl}?labels=${this.labels.id}`, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const body = await response.json();
    const tbody = this.table && this.table.querySelector("tbody");
    if (!tbody) return;
    tbody.replaceChildren(...body.rows.map((row) => this.metricsRow(row)));
    this.root.dataset.metricsFor = String(body.labelsDerivativeId);
  }

  metricsRow(row) {
    const tr = document.createElement("tr");
    tr.dataset.label = String(row.label);
    tr.tabIndex = 0;
    const cells = [row.name, ...METRIC_COLUMNS.map((m) => fmt(row.values[m], m === "volume_ml" ? 1 : 1))];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const plot = document.createElement("td");
    plot.append(profileSvg(row.profile));
    tr.append(plot);
    const flags = document.createElement("td");
    if (row.flags.length) {
      flags.textContent = `⚠ ${row.flags.join("; ")}`;
      flags.className = "qc-flag";
    }
    tr.append(flags);
    return tr;
  }

  async labelsSaved(labelsDerivativeId) {
    let entry = this.data.labels.find((x) => x.id === labelsDerivativeId);
    if (!entry) {
      entry = {
        id: labelsDerivativeId,
        seriesId: this.labels ? this.labels.seriesId : null,
        name: `labels #${labelsDerivativeId}`,
        url: this.data.derivativeUrl.replace(/\/0\.nii\.gz$/, `/${labelsDerivativeId}.nii.gz`),
      };
      this.data.labels.push(entry);
      const select = this.q("[data-role=labels]");
      if (select) {
        const option = document.createElement("option");
        option.value = String(entry.id);
        option.textContent = entry.name;
        select.append(option);
        select.value = option.value;
      }
    }
    this.labels = entry;
    this.data.labelsDerivativeId = entry.id;
    if (window.myovaultViewer && window.myovaultViewer.nv === this.nv) window.myovaultViewer.labelsDerivativeId = entry.id;
    await this.load();
    await this.reloadMetrics();
  }
}

function profileSvg(profile) {
  const width = 120;
  const height = 32;
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "fat fraction from proximal (left) to distal (right), 0–100 %");
  const finite = profile.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  if (!finite.length) return svg;
  const n = Math.max(profile.length - 1, 1);
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("points", finite.map(([i, v]) => `${((i * width) / n).toFixed(1)},${(height - (Math.max(0, Math.min(v, 100)) * height) / 100).toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#c0392b");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  return svg;
}

async function boot() {
  const viewers = [];
  for (const root of document.querySelectorAll("[data-viewer]")) {
    const data = JSON.parse(root.querySelector("script[type='application/json']").textContent);
    viewers.push(await new VisitViewer(root, data).start());
  }
  if (viewers.length === 2) {
    // longitudinal page: the two canvases follow each other (crosshair, slice, zoom, 3D)
    viewers[0].nv.broadcastTo(viewers[1].nv, { "2d": true, "3d": true });
    viewers[1].nv.broadcastTo(viewers[0].nv, { "2d": true, "3d": true });
    window.myovaultCompare = viewers.map((v) => v.nv);
    for (const button of document.querySelectorAll("[data-sync-slice]")) {
      button.addEventListener("click", () => {
        for (const v of viewers) v.nv.setSliceType(SLICE_TYPES[button.dataset.syncSlice]);
      });
    }
  }
  if (viewers.length === 1) {
    const v = viewers[0];
    window.myovaultViewer = {
      nv: v.nv,
      visitId: v.data.visitId,
      labelsDerivativeId: v.labels ? v.labels.id : null,
      labelNames: v.data.labelNames,
    };
    document.addEventListener("myovault:labels-saved", (event) => {
      const id = event.detail && Number(event.detail.labelsDerivativeId);
      if (id) v.labelsSaved(id);
    });
  }
  document.body.dataset.viewerReady = "true";
  document.dispatchEvent(new CustomEvent("myovault:viewer-ready"));
}

boot().catch((error) => {
  document.body.dataset.viewerError = String(error);
  const out = document.querySelector("[data-role=viewer-error]");
  if (out) {
    out.hidden = false;
    out.textContent = `The viewer could not start: ${error}`;
  }
  console.error(error);
});
