// The prompt explorer (docs/report.md): every similarity map and mask is computed here, from the
// compact features the page carries (mmc/explorer/encode.py), with the evaluation's own rules:
// - the similarity of tokens t and s is sum_j q_tj * q_sj * 4^shift_j, scaled by 4^-e_max: integer
//   terms and partial sums below 2^53, hence exact in doubles, in any order (= page_similarities);
// - the mask is mmc.evaluation.protocol.predicted_mask: "nearest" thresholds the grid (s >= tau) and
//   upsamples it centre-aligned; "bilinear" upsamples the map (half-pixel centres, float32 weights
//   applied to doubles, as numpy does) and then thresholds.
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const MAIN_SIDE = 384; // CSS pixels of the selected image's longer side
  const PANEL_SIDE = 224; // CSS pixels of each model's views

  // ------------------------------------------------------------------ decoding
  function bytesOf(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  async function inflate(b64) {
    const stream = new Blob([bytesOf(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function unpackBits(packed, n) {
    // np.packbits order: the first pixel is the most significant bit of the first byte
    const out = new Uint8Array(n);
    for (let p = 0; p < n; p++) out[p] = (packed[p >> 3] >> (7 - (p & 7))) & 1;
    return out;
  }

  function pow2(n) {
    // exact: repeated doubling or halving of 1
    let value = 1;
    for (let i = 0; i < Math.abs(n); i++) value = n > 0 ? value * 2 : value / 2;
    return value;
  }

  function decodeFeatures(entry) {
    const raw = bytesOf(entry.q);
    const view = new DataView(raw.buffer);
    const count = entry.grid[0] * entry.grid[1] * entry.rank;
    const q = new Float64Array(count);
    for (let i = 0; i < count; i++) q[i] = entry.bits === 8 ? view.getInt8(i) : view.getInt16(2 * i, true);
    const weights = entry.shifts.map((s) => pow2(2 * s));
    return { q, weights, scale: pow2(-2 * entry.e_max), rank: entry.rank, grid: entry.grid, eps: entry.eps };
  }

  const decoded = new Map();
  async function decodeImage(index) {
    if (decoded.has(index)) return decoded.get(index);
    const image = DATA.images[index];
    const n = image.h * image.w;
    const result = {
      void: unpackBits(await inflate(image.void), n),
      objects: [],
      features: image.features.map(decodeFeatures),
    };
    for (const obj of image.objects) {
      result.objects.push({ ...obj, mask: unpackBits(await inflate(obj.mask), n) });
    }
    decoded.set(index, result);
    return result;
  }

  // ------------------------------------------------------------------ the protocol's rules
  function gridIndex(size, grid) {
    // mmc.evaluation.metrics.grid_index: the patch of each label pixel, centre-aligned
    const out = new Int32Array(size);
    for (let i = 0; i < size; i++) out[i] = Math.min(Math.trunc(((i + 0.5) * grid) / size), grid - 1);
    return out;
  }

  function similarities(features, token) {
    const { q, weights, scale, rank } = features;
    const n = features.grid[0] * features.grid[1];
    const prompt = new Float64Array(rank);
    for (let j = 0; j < rank; j++) prompt[j] = q[token * rank + j] * weights[j];
    const out = new Float64Array(n);
    for (let s = 0; s < n; s++) {
      let sum = 0;
      for (let j = 0; j < rank; j++) sum += prompt[j] * q[s * rank + j];
      out[s] = sum * scale;
    }
    return out;
  }

  function bilinearAxis(sizeIn, sizeOut) {
    // mmc.evaluation.metrics._bilinear_axis
    const lo = new Int32Array(sizeOut), hi = new Int32Array(sizeOut), w = new Float64Array(sizeOut);
    for (let i = 0; i < sizeOut; i++) {
      const src = Math.min(Math.max(((i + 0.5) * sizeIn) / sizeOut - 0.5, 0), sizeIn - 1);
      lo[i] = Math.floor(src);
      hi[i] = Math.min(lo[i] + 1, sizeIn - 1);
      w[i] = Math.fround(src - lo[i]);
    }
    return { lo, hi, w };
  }

  // The value each label pixel is thresholded on: the token's similarity ("nearest") or the
  // bilinearly upsampled map ("bilinear").
  function pixelValues(sims, grid, h, w, upsample) {
    const [gh, gw] = grid;
    const out = new Float64Array(h * w);
    if (upsample === "nearest") {
      const rows = gridIndex(h, gh), cols = gridIndex(w, gw);
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[y * w + x] = sims[rows[y] * gw + cols[x]];
      return out;
    }
    const ay = bilinearAxis(gh, h), ax = bilinearAxis(gw, w);
    const rows = new Float64Array(h * gw);
    for (let y = 0; y < h; y++) {
      const a = Math.fround(1 - ay.w[y]), b = ay.w[y];
      for (let c = 0; c < gw; c++) rows[y * gw + c] = sims[ay.lo[y] * gw + c] * a + sims[ay.hi[y] * gw + c] * b;
    }
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const a = Math.fround(1 - ax.w[x]), b = ax.w[x];
        out[y * w + x] = rows[y * gw + ax.lo[x]] * a + rows[y * gw + ax.hi[x]] * b;
      }
    }
    return out;
  }

  function predictedMask(values, tau) {
    const mask = new Uint8Array(values.length);
    for (let i = 0; i < values.length; i++) mask[i] = values[i] >= tau ? 1 : 0;
    return mask;
  }

  function iou(pred, target, voidMask) {
    // mmc.evaluation.metrics.iou: void pixels excluded; an empty union scores 1
    let inter = 0, union = 0;
    for (let i = 0; i < pred.length; i++) {
      if (voidMask[i]) continue;
      if (pred[i] && target[i]) inter++;
      if (pred[i] || target[i]) union++;
    }
    return union === 0 ? 1 : inter / union;
  }

  // ------------------------------------------------------------------ drawing
  function element(tag, attrs = {}, children = []) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") el.textContent = v;
      else el.setAttribute(k, v);
    }
    for (const child of children) el.appendChild(child);
    return el;
  }

  function displaySize(h, w, side) {
    const scale = side / Math.max(h, w);
    return [Math.round(w * scale), Math.round(h * scale)];
  }

  function sized(el, h, w, side) {
    const [cw, ch] = displaySize(h, w, side);
    el.style.width = cw + "px";
    el.style.height = ch + "px";
    return el;
  }

  function drawMask(canvas, mask, h, w) {
    // opaque colour where predicted, fully transparent elsewhere: read back exactly by the tests
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      img.data[4 * i] = 255; img.data[4 * i + 1] = 48; img.data[4 * i + 2] = 32; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function hexRgb(hex) {
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  }
  const COLOURS = DATA.colormap.map(hexRgb);

  function drawSimilarity(canvas, sims, grid) {
    const [gh, gw] = grid;
    canvas.width = gw;
    canvas.height = gh;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(gw, gh);
    for (let i = 0; i < gh * gw; i++) {
      const k = Math.min(255, Math.max(0, Math.round(sims[i] * 255)));
      const [r, g, b] = COLOURS[k];
      img.data.set([r, g, b, 255], 4 * i);
    }
    ctx.putImageData(img, 0, 0);
  }

  function drawOutline(canvas, mask, h, w, point) {
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    if (mask) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const i = y * w + x;
          if (!mask[i]) continue;
          const edge = y === 0 || x === 0 || y === h - 1 || x === w - 1 ||
            !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
          if (edge) img.data.set([255, 255, 255, 255], 4 * i);
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    if (point) {
      const r = Math.max(2, Math.round(Math.max(h, w) / 40));
      ctx.strokeStyle = "#000";
      ctx.lineWidth = Math.max(1, r / 2);
      ctx.beginPath();
      ctx.moveTo(point.x - r, point.y - r); ctx.lineTo(point.x + r, point.y + r);
      ctx.moveTo(point.x + r, point.y - r); ctx.lineTo(point.x - r, point.y + r);
      ctx.stroke();
      ctx.strokeStyle = "#ffde00";
      ctx.lineWidth = Math.max(1, r / 4);
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------ the page
  const state = { image: 0, y: 0, x: 0, tau: DATA.demo_tau, bestTau: false, results: {} };
  const ui = {};

  function clickedPixel(event, el, h, w) {
    const rect = el.getBoundingClientRect();
    const x = Math.min(w - 1, Math.max(0, Math.floor(((event.clientX - rect.left) * w) / rect.width)));
    const y = Math.min(h - 1, Math.max(0, Math.floor(((event.clientY - rect.top) * h) / rect.height)));
    return { y, x };
  }

  function stack(image, side, layers) {
    const box = sized(element("div", { class: "stack" }), image.h, image.w, side);
    const img = element("img", { src: "data:image/jpeg;base64," + image.jpeg, alt: image.id, draggable: "false" });
    box.appendChild(img);
    for (const layer of layers) box.appendChild(layer);
    return box;
  }

  function build() {
    document.getElementById("title").textContent =
      `Prompt explorer: ${DATA.dataset} (run ${DATA.run})`;
    const grid = document.getElementById("grid");
    DATA.images.forEach((image, index) => {
      const thumb = element("img", {
        src: "data:image/jpeg;base64," + image.jpeg, alt: image.id, title: image.id,
        class: "thumb", "data-index": String(index), draggable: "false",
      });
      thumb.addEventListener("click", (event) => {
        const p = clickedPixel(event, thumb, image.h, image.w);
        select(index, p.y, p.x);
      });
      grid.appendChild(thumb);
    });
    const slider = document.getElementById("tau");
    slider.min = String(DATA.tau_min);
    slider.max = String(DATA.tau_max);
    slider.step = "0.01";
    slider.value = String(DATA.demo_tau);
    slider.addEventListener("input", () => setTau(Number(slider.value)));
    document.getElementById("best-tau").addEventListener("change", (event) => {
      state.bestTau = event.target.checked;
      render();
    });
    document.getElementById("representation").textContent = DATA.models
      .map((m) => `${m.name}: ${m.bits}-bit, rank ${m.rank} of ${m.dim}, max |page − evaluation| ${m.eps.toExponential(2)}`)
      .join("; ");
  }

  function tauOf(model) {
    // slider values are k/100: the same double as the Python literal of that threshold
    return state.bestTau && model.best_tau !== null ? model.best_tau : Math.round(state.tau * 100) / 100;
  }

  function setTau(value) {
    state.tau = value;
    document.getElementById("tau").value = String(value);
    render();
  }

  async function select(index, y, x) {
    state.image = index;
    state.y = y;
    state.x = x;
    await decodeImage(index);
    document.querySelectorAll(".thumb").forEach((t) => t.classList.toggle("selected", Number(t.dataset.index) === index));
    if (ui.layoutImage !== index) {
      layout();
      ui.layoutImage = index;
    }
    render();
  }

  function layout() {
    const image = DATA.images[state.image];
    const main = document.getElementById("main");
    main.replaceChildren();
    ui.mainOverlay = element("canvas", { class: "layer" });
    const box = stack(image, MAIN_SIDE, [ui.mainOverlay]);
    box.id = "main-image";
    box.addEventListener("click", (event) => {
      const p = clickedPixel(event, box, image.h, image.w);
      select(state.image, p.y, p.x);
    });
    main.appendChild(box);
    ui.mainInfo = element("p", { id: "main-info" });
    main.appendChild(ui.mainInfo);

    const panels = document.getElementById("panels");
    panels.replaceChildren();
    ui.panels = DATA.models.map((model) => {
      const sim = element("canvas", { class: "layer similarity", "data-model": model.name });
      const mask = element("canvas", { class: "layer mask", "data-model": model.name });
      const outline = element("canvas", { class: "layer outline" });
      const info = element("p", { class: "info", "data-model": model.name });
      const tau = element("span", { class: "tau" });
      const panel = element("div", { class: "panel", "data-model": model.name }, [
        element("h3", {}, [element("span", { text: model.name }), tau]),
        element("div", { class: "views" }, [
          stack(image, PANEL_SIDE, [sim]),
          stack(image, PANEL_SIDE, [mask, outline]),
        ]),
        info,
      ]);
      panels.appendChild(panel);
      return { model, sim, mask, outline, info, tau };
    });
  }

  function objectAt(image, decodedImage, y, x) {
    const i = y * image.w + x;
    if (decodedImage.void[i]) return { void: true };
    for (const obj of decodedImage.objects) if (obj.mask[i]) return obj;
    return null;
  }

  function render() {
    document.getElementById("tau-value").textContent = state.bestTau
      ? "each model's best" : (Math.round(state.tau * 100) / 100).toFixed(2);
    const image = DATA.images[state.image];
    const dec = decoded.get(state.image);
    if (!dec || !ui.panels) return;
    const { y, x } = state;
    const hit = objectAt(image, dec, y, x);
    const obj = hit && !hit.void ? hit : null;
    drawOutline(ui.mainOverlay, obj ? obj.mask : null, image.h, image.w, { y, x });
    ui.mainInfo.textContent =
      `${image.id}: prompt pixel (y ${y}, x ${x}); ` +
      (obj ? `object ${obj.id} (class ${obj.class_id})` : hit ? "a void pixel (not scored)" : "not on an annotated object");
    state.results = {};
    ui.panels.forEach((panel, m) => {
      const features = dec.features[m];
      const [gh, gw] = features.grid;
      const token = gridIndex(image.h, gh)[y] * gw + gridIndex(image.w, gw)[x];
      const sims = similarities(features, token);
      const tau = tauOf(panel.model);
      const values = pixelValues(sims, features.grid, image.h, image.w, DATA.upsample);
      const mask = predictedMask(values, tau);
      let uncertain = 0;
      for (let i = 0; i < values.length; i++) if (Math.abs(values[i] - tau) <= features.eps) uncertain++;
      drawSimilarity(panel.sim, sims, features.grid);
      drawMask(panel.mask, mask, image.h, image.w);
      drawOutline(panel.outline, obj ? obj.mask : null, image.h, image.w, { y, x });
      const score = obj ? iou(mask, obj.mask, dec.void) : null;
      panel.tau.textContent = ` τ = ${tau.toFixed(2)}`;
      panel.info.textContent =
        (score === null ? "IoU: no object under the prompt" : `IoU with object ${obj.id}: ${score.toFixed(3)}`) +
        ` · ${uncertain} px within ±${features.eps.toExponential(1)} of τ`;
      state.results[panel.model.name] = { tau, iou: score, uncertain, token, object: obj ? obj.id : null, mask };
    });
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  }

  // The page's state and its masks, for the tests (and the curious).
  window.explorer = {
    data: DATA,
    state,
    select,
    setTau,
    maskOf: (name) => Array.from(state.results[name].mask).join(""),
  };

  build();
  const first = DATA.images[0];
  const prompt = first.objects.find((o) => o.prompt) || null;
  window.explorer.ready = select(0, prompt ? prompt.prompt[0] : first.h >> 1, prompt ? prompt.prompt[1] : first.w >> 1);
})();
