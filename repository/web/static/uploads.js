// MyoVault uploads: resumable chunked upload (upload page) and live progress (detail page).
// No inline script (CSP script-src 'self'). Protocol: see repository/services/uploads.py.
"use strict";

// ---- incremental SHA-256 (WebCrypto has no streaming digest; files can be gigabytes) ----------
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.total = 0;
    this.w = new Uint32Array(64);
  }
  block(data, off) {
    const w = this.w, h = this.h;
    for (let i = 0; i < 16; i++) {
      const j = off + i * 4;
      w[i] = (data[j] << 24) | (data[j + 1] << 16) | (data[j + 2] << 8) | data[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (k + S1 + ch + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  update(data) {
    let i = 0;
    this.total += data.length;
    if (this.bufLen) {
      while (this.bufLen < 64 && i < data.length) this.buf[this.bufLen++] = data[i++];
      if (this.bufLen < 64) return;
      this.block(this.buf, 0);
      this.bufLen = 0;
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    while (i < data.length) this.buf[this.bufLen++] = data[i++];
  }
  hex() {
    const bits = this.total * 8;
    const pad = new Uint8Array(((this.bufLen < 56 ? 56 : 120) - this.bufLen) + 8);
    pad[0] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, Math.floor(bits / 0x100000000));
    view.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    return Array.from(this.h, (x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
  }
}

async function chunkSha(bytes) {
  if (window.crypto && crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const h = new Sha256();
  h.update(new Uint8Array(bytes));
  return h.hex();
}

// ---- unfinished uploads kept in IndexedDB (File objects are structured-cloneable) --------------
// One record per project: { files: File[], specs, uploadId, statusUrl }. On the next visit the
// page offers "Resume" and continues from the server's offsets without the file chooser.
const IDB_NAME = "myovault-uploads";
function idb() {
  return new Promise((resolve, reject) => {
    if (!window.indexedDB) { reject(new Error("no IndexedDB")); return; }
    const request = indexedDB.open(IDB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore("pending");
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}
async function idbDo(mode, action) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("pending", mode);
    const request = action(tx.objectStore("pending"));
    tx.oncomplete = () => { db.close(); resolve(request.result); };
    tx.onerror = () => { db.close(); reject(tx.error); };
  });
}
const pendingGet = (key) => idbDo("readonly", (s) => s.get(key)).catch(() => undefined);
const pendingPut = (key, value) => idbDo("readwrite", (s) => s.put(value, key)).catch(() => undefined);
const pendingDelete = (key) => idbDo("readwrite", (s) => s.delete(key)).catch(() => undefined);

// ---- upload page ------------------------------------------------------------------------------
function fileKey(file) {
  return [file.webkitRelativePath || file.name, file.size, file.lastModified].join("|");
}

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function initUploadPage(app) {
  const chunkBytes = parseInt(app.dataset.chunkBytes, 10);
  const maxBytes = parseInt(app.dataset.maxBytes, 10);
  const csrf = app.dataset.csrf;
  const storeKey = "myovault-upload:" + app.dataset.project;
  const start = document.getElementById("start-upload");
  const overall = document.getElementById("overall");
  const overallText = document.getElementById("overall-text");
  const rowsBody = document.getElementById("file-rows");
  const table = document.getElementById("file-table");
  const errorBox = document.getElementById("upload-error");
  let files = [];

  function pick(list) {
    files = Array.from(list);
    const total = files.reduce((s, f) => s + f.size, 0);
    overallText.textContent = files.length + " files, " + total + " bytes";
    start.disabled = files.length === 0 || total > maxBytes;
    if (total > maxBytes) showError("larger than the upload limit of " + maxBytes + " bytes");
  }
  function showError(message) {
    errorBox.hidden = false;
    errorBox.textContent = message;
  }
  document.getElementById("pick-folder").addEventListener("change", (e) => pick(e.target.files));
  document.getElementById("pick-files").addEventListener("change", (e) => pick(e.target.files));

  async function api(method, url, body, headers) {
    const response = await fetch(url, {
      method, body, credentials: "same-origin",
      headers: Object.assign({ "X-CSRFToken": csrf }, headers || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (err) { data = {}; }
    return { status: response.status, data };
  }

  async function run(resume) {
    if (resume) files = resume.files;
    start.disabled = true;
    resumeBox.hidden = true;
    errorBox.hidden = true;
    table.hidden = false;
    rowsBody.textContent = "";
    const total = files.reduce((s, f) => s + f.size, 0) || 1;
    const rows = new Map();
    for (const file of files) {
      const tr = el("tr");
      const bar = el("progress");
      bar.max = 1; bar.value = 0;
      const state = el("td", "hashing");
      const name = el("td", file.webkitRelativePath || file.name);
      const cell = el("td");
      cell.appendChild(bar);
      tr.append(name, cell, state);
      tr.dataset.testid = "file-row";
      rowsBody.appendChild(tr);
      rows.set(file, { bar, state });
    }
    // 1. whole-file sha256 (read in chunks: memory stays flat); known already when resuming
    let hashed = 0;
    const specs = resume ? resume.specs : [];
    for (const file of resume ? [] : files) {
      const h = new Sha256();
      for (let off = 0; off < file.size; off += chunkBytes) {
        h.update(new Uint8Array(await file.slice(off, off + chunkBytes).arrayBuffer()));
        hashed += Math.min(chunkBytes, file.size - off);
        overall.value = 0.2 * hashed / total;
        overallText.textContent = "checking files " + Math.round(100 * hashed / total) + "%";
      }
      specs.push({ path: file.webkitRelativePath || file.name, size: file.size, sha256: h.hex() });
      rows.get(file).state.textContent = "ready";
    }
    // 2. resume a stored session for exactly these files, or open a new one
    const saved = JSON.parse(localStorage.getItem(storeKey) || "null");
    const signature = files.map(fileKey).join("\n");
    let upload = null;
    if (resume) {
      const r = await api("GET", resume.statusUrl);
      if (r.status === 200 && r.data.upload.state === "open") upload = r.data.upload;
      else { await pendingDelete(storeKey); showError("that upload can no longer be resumed"); start.disabled = false; return; }
    } else if (saved && saved.signature === signature) {
      const r = await api("GET", saved.statusUrl);
      if (r.status === 200 && r.data.upload.state === "open") upload = r.data.upload;
    }
    if (!upload) {
      const label = document.getElementById("upload-label").value;
      const r = await api("POST", app.dataset.createUrl, JSON.stringify({ files: specs, label }),
        { "Content-Type": "application/json" });
      if (r.status !== 201) { showError(r.data.message || "the upload could not start"); return; }
      upload = r.data.upload;
      localStorage.setItem(storeKey, JSON.stringify({
        signature, statusUrl: "/uploads/" + upload.id + "/status.json",
      }));
    }
    if (!resume) {
      await pendingPut(storeKey, {
        files, specs, uploadId: upload.id, statusUrl: "/uploads/" + upload.id + "/status.json",
      });
    }
    const byPath = new Map(upload.files.map((f) => [f.path, f]));
    // 3. send the chunks from each file's server-side offset
    let sent = upload.files.reduce((s, f) => s + (f.state === "uploading" ? f.offset : f.size), 0);
    for (const file of files) {
      const info = byPath.get(file.webkitRelativePath || file.name);
      const row = rows.get(file);
      if (!info) continue;
      let offset = info.offset;
      row.state.textContent = info.state;
      while (info.state === "uploading" && offset < file.size) {
        const bytes = await file.slice(offset, offset + chunkBytes).arrayBuffer();
        const r = await api("PATCH", "/uploads/" + upload.id + "/files/" + info.id + "/chunk", bytes, {
          "Content-Type": "application/offset+octet-stream",
          "Upload-Offset": String(offset),
          "Upload-Checksum": "sha256 " + (await chunkSha(bytes)),
        });
        if (r.status === 409 && typeof r.data.offset === "number") { offset = r.data.offset; continue; }
        if (r.status !== 200) { row.state.textContent = "error: " + (r.data.message || r.status); break; }
        sent += r.data.file.offset - offset;
        offset = r.data.file.offset;
        info.state = r.data.file.state;
        row.bar.value = offset / (file.size || 1);
        row.state.textContent = r.data.file.state + (r.data.file.reason ? " (" + r.data.file.reason + ")" : "");
        overall.value = 0.2 + 0.8 * sent / total;
        overallText.textContent = "uploading " + Math.round(100 * sent / total) + "%";
      }
      if (info.state !== "uploading") {
        row.bar.value = 1;
        row.state.textContent = info.state + (info.reason ? " (" + info.reason + ")" : "");
      }
    }
    // 4. start the pipeline, then follow it on the upload's page
    const done = await api("POST", "/uploads/" + upload.id + "/complete");
    if (done.status !== 202) { showError(done.data.message || "the upload is incomplete: choose the files again to resume"); start.disabled = false; return; }
    localStorage.removeItem(storeKey);
    await pendingDelete(storeKey);
    overall.value = 1;
    overallText.textContent = "uploaded; processing";
    window.location.assign("/uploads/" + upload.id);
  }
  start.addEventListener("click", () => { run().catch((err) => { showError(String(err)); start.disabled = false; }); });

  // an unfinished upload of this project from an earlier visit: offer to resume it
  const resumeBox = document.getElementById("resume-box");
  const resumeButton = document.getElementById("resume-upload");
  pendingGet(storeKey).then(async (saved) => {
    if (!saved || !saved.files || !saved.files.length) return;
    const r = await api("GET", saved.statusUrl);
    if (r.status !== 200 || r.data.upload.state !== "open") { await pendingDelete(storeKey); return; }
    const received = r.data.upload.bytes_received, total = r.data.upload.bytes_total;
    document.getElementById("resume-text").textContent = "Upload " + saved.uploadId + " (" +
      saved.files.length + " files) stopped at " + Math.round(100 * received / (total || 1)) +
      "%.";
    resumeBox.hidden = false;
    resumeButton.addEventListener("click", () => {
      run(saved).catch((err) => { showError(String(err)); start.disabled = false; });
    });
  });
}

// ---- detail page: poll the status -------------------------------------------------------------
function initStatusPage(panel) {
  const url = panel.dataset.statusUrl;
  async function poll() {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const upload = (await response.json()).upload;
    document.getElementById("upload-state").textContent = upload.state;
    document.getElementById("upload-message").textContent = upload.message;
    const bytes = document.getElementById("bytes-progress");
    bytes.max = upload.bytes_total || 1; bytes.value = upload.bytes_received;
    document.getElementById("upload-counts").textContent =
      Object.entries(upload.counts).map(([k, v]) => k + ": " + v).join(", ");
    const jobs = document.getElementById("upload-jobs");
    jobs.textContent = "";
    for (const job of upload.jobs) {
      const li = el("li", job.kind + ": " + job.status + " " + Math.round(100 * job.progress) + "% " + job.message + (job.error ? " — " + job.error : ""));
      const bar = el("progress"); bar.max = 1; bar.value = job.progress;
      li.prepend(bar);
      jobs.appendChild(li);
    }
    const retry = document.getElementById("retry-form");
    if (retry) retry.hidden = !upload.jobs.some((job) => job.status === "failed");
    const attention = document.getElementById("attention-rows");
    attention.textContent = "";
    for (const f of upload.needs_attention) {
      const tr = el("tr");
      tr.append(el("td", f.path), el("td", f.state), el("td", f.reason + ": " + f.detail));
      attention.appendChild(tr);
    }
    if (!upload.needs_attention.length) {
      const tr = el("tr"); const td = el("td", "Nothing needs attention."); td.colSpan = 3; tr.appendChild(td); attention.appendChild(tr);
    }
    const files = document.getElementById("file-rows");
    files.textContent = "";
    for (const f of upload.files) {
      const tr = el("tr");
      tr.append(el("td", f.path), el("td", String(f.size)), el("td", f.state + (f.reason ? " (" + f.reason + ")" : "")));
      files.appendChild(tr);
    }
    if (upload.state === "open" || upload.state === "processing") setTimeout(poll, 1500);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  const app = document.getElementById("upload-app");
  if (app) initUploadPage(app);
  const panel = document.getElementById("upload-status");
  if (panel) initStatusPage(panel);
});
