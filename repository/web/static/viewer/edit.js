// MyoVault label correction (issue 9 item 3): NiiVue's drawing tools on the viewer page.
//
// The viewer page (viewer.js) exposes window.myovaultViewer = {nv, visitId, labelsDerivativeId,
// labelNames} and dispatches "myovault:viewer-ready". "Edit labels" copies the current label
// overlay into NiiVue's drawing layer (coloured like the overlay), offers paint / fill outline /
// erase / erase region per muscle with undo, and "Save" serialises the drawing as a NIfTI
// (NiiVue saveImage({isSaveDrawing: true}), header made 3D) and POSTs it to the portal with the
// CSRF header. Once the metrics job has finished it dispatches "myovault:labels-saved".

const panel = document.querySelector("[data-edit-panel]");
const TOOLS = {
  paint: (label) => [label, false],
  fill: (label) => [label, true],
  erase: () => [0, false],
  "erase-region": () => [-0, false], // NiiVue: -0 erases the clicked cluster on the slice
};
const METRICS_POLL_MS = 1000;
const METRICS_WAIT_MS = 120000;

function urlFor(template, id) {
  return template.replace(/\/0(?=[/.]|$)/, `/${id}`);
}

function pageData() {
  const node = document.querySelector("[data-viewer] script[type='application/json']");
  try {
    return node ? JSON.parse(node.textContent) : {};
  } catch (error) {
    return {};
  }
}

// NiiVue label colormap {R, G, B, A, I, labels} with the overlay's colours.
function drawColormap(labelNames, palette) {
  const cmap = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
  for (const id of Object.keys(labelNames).map(Number).sort((a, b) => a - b)) {
    const [r, g, b] = (palette && palette[id]) || [255, 255, 0];
    cmap.R.push(r);
    cmap.G.push(g);
    cmap.B.push(b);
    cmap.A.push(255);
    cmap.I.push(id);
    cmap.labels.push(labelNames[id]);
  }
  return cmap;
}

function prettyName(name) {
  const [side, ...rest] = String(name).split("_");
  return `${side === "right" ? "R" : side === "left" ? "L" : side} ${rest.join(" ")}`;
}

// A clean 3D uint8 NIfTI-1 from NiiVue's drawing export: NiiVue copies the background's header,
// which may declare a 4th dimension (multi-echo series) or extensions; the drawing is one 3D
// volume starting right after the 352-byte header.
export function drawingToNifti(bytes) {
  const src = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const little = src.getInt32(0, true) === 348;
  const dims = [];
  for (let i = 0; i < 8; i++) dims.push(src.getInt16(40 + 2 * i, little));
  const nVox = dims[1] * Math.max(dims[2], 1) * Math.max(dims[3], 1);
  if (!(nVox > 0) || bytes.byteLength < 348 + nVox) throw new Error("the drawing could not be exported");
  const out = new Uint8Array(352 + nVox);
  out.set(bytes.subarray(0, 348), 0);
  out.set(bytes.subarray(bytes.byteLength - nVox), 352);
  const dst = new DataView(out.buffer);
  dst.setInt16(40, 3, little);
  for (let i = 4; i < 8; i++) dst.setInt16(40 + 2 * i, 1, little);
  dst.setInt16(68, 1002, little); // intent: NIFTI_INTENT_LABEL
  dst.setInt16(70, 2, little); // DT_UINT8
  dst.setInt16(72, 8, little);
  dst.setFloat32(108, 352, little); // vox_offset
  dst.setFloat32(112, 1, little); // scl_slope
  dst.setFloat32(116, 0, little); // scl_inter
  return out;
}

class LabelEditor {
  constructor(root) {
    this.root = root;
    this.q = (sel) => root.querySelector(sel);
    this.viewer = null;
    this.tool = "paint";
    this.editing = false;
    this.hiddenOverlay = null;
    this.bind();
  }

  bind() {
    this.q("[data-action=start]").addEventListener("click", () => this.start());
    this.q("[data-action=undo]").addEventListener("click", () => this.viewer && this.viewer.nv.drawUndo());
    this.q("[data-action=save]").addEventListener("click", () => this.save());
    this.q("[data-action=cancel]").addEventListener("click", () => this.stop("Edits discarded."));
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => this.setTool(button.dataset.tool));
    }
    this.q("[data-role=muscle]").addEventListener("change", () => this.setTool(this.tool));
    this.q("[data-role=pen-size]").addEventListener("change", (event) => {
      const size = Math.max(1, Math.min(15, Math.round(Number(event.target.value) || 1)));
      if (this.viewer) this.viewer.nv.opts.penSize = size;
    });
    document.addEventListener("keydown", (event) => {
      if (this.editing && (event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
        event.preventDefault();
        this.viewer.nv.drawUndo();
      }
    });
    window.addEventListener("beforeunload", (event) => {
      if (this.editing) {
        event.preventDefault();
        event.returnValue = "";
      }
    });
  }

  // Switching the image or the label version reloads NiiVue's volumes under the drawing:
  // the viewer's selectors are locked while editing.
  lockViewer(locked) {
    for (const sel of ["[data-viewer] [data-role=base]", "[data-viewer] [data-role=labels]"]) {
      const node = document.querySelector(sel);
      if (node) node.disabled = locked;
    }
  }

  attach(viewer) {
    this.viewer = viewer;
    const select = this.q("[data-role=muscle]");
    select.replaceChildren();
    const ids = Object.keys(viewer.labelNames || {}).map(Number).sort((a, b) => a - b);
    for (const id of ids) {
      const option = document.createElement("option");
      option.value = String(id);
      option.textContent = `${prettyName(viewer.labelNames[id])} (${id})`;
      select.append(option);
    }
    const ok = Boolean(viewer.nv && viewer.labelsDerivativeId && ids.length);
    this.q("[data-action=start]").disabled = !ok;
    this.root.dataset.state = ok ? "ready" : "unavailable";
    if (!viewer.labelsDerivativeId) this.status("This visit has no label image to correct.");
  }

  status(text, isError = false) {
    const out = this.q("[data-role=status]");
    out.textContent = text;
    out.classList.toggle("error-text", isError);
  }

  labelVolumeIndex() {
    const nv = this.viewer.nv;
    const byName = nv.volumes.findIndex((v) => String(v.name || "").startsWith("labels-"));
    if (byName > 0) return byName;
    return nv.volumes.length > 1 ? nv.volumes.length - 1 : -1;
  }

  async start() {
    const { nv, labelsDerivativeId } = this.viewer;
    const data = pageData();
    nv.setDrawColormap(drawColormap(this.viewer.labelNames, data.palette));
    const index = this.labelVolumeIndex();
    let loaded = false;
    if (index > 0) loaded = nv.loadDrawing(nv.volumes[index]);
    if (!loaded) loaded = await nv.loadDrawingFromUrl(urlFor(this.root.dataset.imageUrl, labelsDerivativeId));
    if (!loaded) {
      this.status("The labels are not on the grid of the image shown: choose the series the labels belong to, then try again.", true);
      return;
    }
    if (index > 0) {
      this.hiddenOverlay = { index, opacity: nv.volumes[index].opacity };
      nv.setOpacity(index, 0);
    }
    nv.setDrawOpacity(0.8);
    nv.opts.penSize = Math.max(1, Number(this.q("[data-role=pen-size]").value) || 1);
    nv.setDrawingEnabled(true);
    this.editing = true;
    this.lockViewer(true);
    this.setTool(this.tool);
    this.q("[data-role=tools]").disabled = false;
    this.q("[data-action=start]").disabled = true;
    this.q("[data-role=diff]").replaceChildren();
    this.root.dataset.state = "editing";
    this.status(`Editing version ${this.currentVersionLabel()}: draw on the 2D slices (left mouse button).`);
  }

  currentVersionLabel() {
    const data = pageData();
    const entry = (data.labels || []).find((x) => x.id === this.viewer.labelsDerivativeId);
    return entry && entry.version ? `v${entry.version}` : `#${this.viewer.labelsDerivativeId}`;
  }

  setTool(tool) {
    this.tool = tool;
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.setAttribute("aria-pressed", button.dataset.tool === tool ? "true" : "false");
    }
    if (!this.editing) return;
    const label = Number(this.q("[data-role=muscle]").value);
    const [pen, filled] = TOOLS[tool](label);
    this.viewer.nv.setPenValue(pen, filled);
  }

  restoreOverlay() {
    const { nv } = this.viewer;
    if (this.hiddenOverlay && nv.volumes[this.hiddenOverlay.index]) {
      nv.setOpacity(this.hiddenOverlay.index, this.hiddenOverlay.opacity);
    }
    this.hiddenOverlay = null;
  }

  stop(message) {
    const { nv } = this.viewer;
    nv.setDrawingEnabled(false);
    nv.closeDrawing();
    this.restoreOverlay();
    this.editing = false;
    this.lockViewer(false);
    this.q("[data-role=tools]").disabled = true;
    this.q("[data-action=start]").disabled = false;
    this.root.dataset.state = "ready";
    if (message) this.status(message);
  }

  async save() {
    const { nv } = this.viewer;
    const previousId = this.viewer.labelsDerivativeId;
    this.root.dataset.state = "saving";
    this.q("[data-role=tools]").disabled = true;
    this.status("Saving…");
    let body;
    try {
      const exported = await nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });
      if (!(exported instanceof Uint8Array)) throw new Error("no drawing to save");
      body = drawingToNifti(exported);
    } catch (error) {
      this.failed(`Could not export the drawing: ${error.message || error}`);
      return;
    }
    let response;
    try {
      response = await fetch(urlFor(this.root.dataset.saveUrl, previousId), {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": this.root.dataset.csrf, "Content-Type": "application/octet-stream", Accept: "application/json" },
        body,
      });
    } catch (error) {
      this.failed(`The server could not be reached: ${error.message || error}. Your edits are still here; try again.`);
      return;
    }
    const result = await response.json().catch(() => ({}));
    if (response.status !== 201) {
      this.failed(result.message || `Saving failed (HTTP ${response.status}).`);
      return;
    }
    const newId = result.labelsDerivativeId;
    this.viewer.labelsDerivativeId = newId;
    this.showDiff(result);
    const history = this.q("[data-role=history]");
    history.href = result.historyUrl;
    history.hidden = false;
    this.stop(`Saved version ${result.version} (${result.voxelsChanged} voxels changed). Recomputing the metrics…`);
    this.root.dataset.state = "recomputing";
    const outcome = await this.waitForMetrics(newId);
    document.dispatchEvent(new CustomEvent("myovault:labels-saved", { detail: { labelsDerivativeId: newId } }));
    this.root.dataset.state = "saved";
    this.root.dataset.savedId = String(newId);
    if (outcome === "done") this.status(`Saved version ${result.version}; the metrics are updated.`);
    else if (outcome === "failed") this.status(`Saved version ${result.version}, but recomputing the metrics failed; see the Jobs page.`, true);
    else this.status(`Saved version ${result.version}; the metrics are still being recomputed — reload the page later.`);
  }

  failed(message) {
    this.root.dataset.state = "editing";
    this.q("[data-role=tools]").disabled = false;
    this.status(message, true);
  }

  showDiff(result) {
    const list = this.q("[data-role=diff]");
    list.replaceChildren();
    for (const [name, change] of Object.entries(result.diff || {}).sort()) {
      const item = document.createElement("li");
      item.dataset.muscle = name;
      item.textContent = `${prettyName(name)}: +${change.added} / −${change.removed} voxels`;
      list.append(item);
    }
  }

  async waitForMetrics(id) {
    const deadline = Date.now() + METRICS_WAIT_MS;
    while (Date.now() < deadline) {
      try {
        const response = await fetch(urlFor(this.root.dataset.historyJsonUrl, id), { credentials: "same-origin", cache: "no-store" });
        if (response.ok) {
          const data = await response.json();
          const current = data.versions.find((v) => v.id === id);
          if (current && (current.metrics === "done" || current.metrics === "failed")) return current.metrics;
        }
      } catch (error) {
        // transient: keep polling until the deadline
      }
      await new Promise((resolve) => setTimeout(resolve, METRICS_POLL_MS));
    }
    return "timeout";
  }
}

if (panel) {
  const editor = new LabelEditor(panel);
  window.myovaultLabelEditor = editor;
  const attach = () => {
    if (window.myovaultViewer) editor.attach(window.myovaultViewer);
  };
  document.addEventListener("myovault:viewer-ready", attach);
  if (document.body.dataset.viewerReady === "true") attach();
}
