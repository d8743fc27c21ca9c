// geodino explore: the page. Plain JavaScript over MapLibre GL JS (vendored); every number comes from the server.
"use strict";

const BASE = location.href.replace(/[?#].*$/, "").replace(/[^/]*$/, "");
const $ = (id) => document.getElementById(id);
const state = { session: null, result: null, positives: [], negatives: [], polygons: [], draft: null,
                mode: "click", busy: false };
window.geodino = state;

function tileUrl(layer, params) {
  const q = new URLSearchParams(params).toString();
  return `${BASE}tiles/${layer}/{z}/{x}/{y}.png${q ? "?" + q : ""}`;
}

function status(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = "small" + (error ? " error" : "");
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) };
  const r = await fetch(BASE + path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: `${r.status} ${r.statusText}` }; }
  if (!r.ok) throw new Error(data && data.error ? data.error : `${r.status} ${r.statusText}`);
  return data;
}

const fc = (features) => ({ type: "FeatureCollection", features });
const pointF = (p, role) => ({ type: "Feature", properties: { role }, geometry: { type: "Point", coordinates: p } });

function currentDate() { return $("date").value; }
function kValue() { return Math.max(1, Math.min(25000, parseInt($("k").value || "100", 10))); }
function thresholdValue() {
  const t = $("threshold");
  return parseFloat(t.value) <= parseFloat(t.min) ? null : parseFloat(t.value);
}

function drawExamples() {
  const feats = state.positives.map((p) => pointF(p, "positive"))
    .concat(state.negatives.map((p) => pointF(p, "negative")))
    .concat(state.polygons.map((g) => ({ type: "Feature", properties: { role: "polygon" }, geometry: g })));
  if (state.draft && state.draft.length) {
    feats.push({ type: "Feature", properties: { role: "draft" },
                 geometry: { type: "LineString", coordinates: state.draft } });
    state.draft.forEach((p) => feats.push(pointF(p, "draft")));
  }
  map.getSource("examples").setData(fc(feats));
  $("examples").textContent = `${state.positives.length} positive point(s), ${state.polygons.length} polygon(s), ` +
    `${state.negatives.length} negative(s)`;
}

function setHeat(result) {
  const src = map.getSource("heat");
  if (!result) { map.setLayoutProperty("heat", "visibility", "none"); return; }
  const params = { query: result.id };
  const t = thresholdValue();
  if (t !== null) params.threshold = t;
  src.setTiles([tileUrl("heat", params)]);
  map.setLayoutProperty("heat", "visibility", "visible");
}

function exportLinks(result) {
  const on = !!result;
  for (const id of ["export-geojson", "export-parquet", "export-cog"]) $(id).classList.toggle("disabled", !on);
  if (!on) { $("export-more").innerHTML = ""; return; }
  const params = new URLSearchParams({ k: kValue() });
  const t = thresholdValue();
  if (t !== null) params.set("threshold", t);
  $("export-geojson").href = `${BASE}api/export/${result.id}.geojson?${params}`;
  $("export-parquet").href = `${BASE}api/export/${result.id}.parquet?${params}`;
  $("export-cog").href = `${BASE}api/export/${result.id}.tif?cube=${result.cubes[0]}`;
  const more = $("export-more");
  more.innerHTML = "";
  result.cubes.slice(1).forEach((ci) => {  // one COG per cube: a mosaic's cubes each keep their own CRS
    const a = document.createElement("a");
    a.className = "button"; a.download = ""; a.textContent = `Heat map COG (cube ${ci})`;
    a.href = `${BASE}api/export/${result.id}.tif?cube=${ci}`;
    more.appendChild(a);
  });
}

function showHits(result) {
  const list = $("hits");
  list.innerHTML = "";
  const feats = [];
  result.hits.forEach((h, i) => {
    feats.push({ type: "Feature", properties: { rank: h.rank, score: h.score },
                 geometry: { type: "Polygon", coordinates: [h.footprint] } });
    if (i >= 500) return;  // the list shows the first 500; the map and exports hold all k
    const li = document.createElement("li");
    li.dataset.rank = h.rank; li.dataset.score = h.score; li.dataset.row = h.row; li.dataset.col = h.col;
    li.dataset.cube = h.cube; li.dataset.lon = h.lon; li.dataset.lat = h.lat;
    const img = h.thumb ? `<img loading="lazy" src="${BASE}${h.thumb}" alt="">` : "";
    li.innerHTML = `${img}<div><span class="score">#${h.rank} ${h.score.toFixed(4)}</span>` +
      `${h.exact ? "" : ' <span class="approx" title="compact-code score, not re-ranked">~</span>'}<br>` +
      `<span class="muted">${h.lat.toFixed(5)}, ${h.lon.toFixed(5)}${h.date ? " · " + h.date : ""}</span></div>`;
    li.addEventListener("click", () => map.flyTo({ center: [h.lon, h.lat], zoom: Math.max(map.getZoom(), 12) }));
    list.appendChild(li);
  });
  map.getSource("hits").setData(fc(feats));
  const what = result.mode === "change" ? `most changed patches (${result.date} vs ${result.date_b})` : "hits";
  status(`${result.hits.length} ${what} of ${result.total} ranked; server ${Math.round(result.seconds * 1000)} ms`);
}

function show(result) {
  state.result = result;
  setHeat(result);
  showHits(result);
  exportLinks(result);
  document.body.dataset.query = result.id;
}

async function run() {
  if ($("change").checked) return runChange();
  if (!state.positives.length && !state.polygons.length) {
    state.result = null; setHeat(null); $("hits").innerHTML = ""; map.getSource("hits").setData(fc([]));
    exportLinks(null); status("click a patch (shift-click: a negative), or draw a polygon");
    return;
  }
  status("searching…");
  try {
    show(await api("api/query", { date: currentDate(), positives: state.positives, negatives: state.negatives,
                                  polygons: state.polygons, k: kValue(), threshold: thresholdValue() }));
  } catch (e) { status(e.message, true); }
}

async function runChange() {
  status("computing change…");
  try {
    show(await api("api/change", { date: currentDate(), date_b: $("date-b").value, k: kValue(),
                                   threshold: thresholdValue() }));
  } catch (e) { status(e.message, true); }
}

async function refilter() {  // k and threshold: filter the kept result, no recomputation
  $("threshold-value").textContent = thresholdValue() === null ? "off" : thresholdValue().toFixed(2);
  if (!state.result) return;
  const params = new URLSearchParams({ query: state.result.id, k: kValue() });
  const t = thresholdValue();
  if (t !== null) params.set("threshold", t);
  try {
    const r = await api(`api/hits?${params}`);
    state.result = r; setHeat(r); showHits(r); exportLinks(r);
  } catch (e) { status(e.message, true); }
}

function setBase() {
  const which = $("base").value;
  $("basemap-url").hidden = which !== "basemap";
  for (const id of ["source", "pca", "basemap"]) map.setLayoutProperty(id, "visibility", id === which ? "visible" : "none");
  if (which === "basemap") {
    const url = $("basemap-url").value.trim();
    if (url) map.getSource("basemap").setTiles([url]);
  }
}

function setDate() {
  map.getSource("source").setTiles([tileUrl("source", { date: currentDate() })]);
  map.getSource("pca").setTiles([tileUrl("pca", { date: currentDate() })]);
  run();
}

function setMode(mode) {
  state.mode = mode;
  $("mode-click").classList.toggle("on", mode === "click");
  $("mode-polygon").classList.toggle("on", mode === "polygon");
  $("finish-polygon").hidden = mode !== "polygon";
  if (mode === "polygon") { state.draft = []; map.doubleClickZoom.disable(); }
  else { state.draft = null; map.doubleClickZoom.enable(); }
  drawExamples();
}

function finishPolygon() {
  const d = state.draft || [];
  if (d.length >= 3) {
    state.polygons.push({ type: "Polygon", coordinates: [d.concat([d[0]])] });
  }
  setMode("click");
  run();
}

let map;

async function main() {
  const s = await api("api/session");
  state.session = s;
  const cubeText = s.cubes.map((c) => `${c.name}${c.date ? " (" + c.date + ")" : ""}: ${c.valid} patches` +
    `${c.random_weights ? ", RANDOM weights" : ""}`).join("; ");
  $("cubes").textContent = `${cubeText}. ${s.vectors} vectors, ready in ${s.startup_s} s.`;
  for (const sel of [$("date"), $("date-b")]) {
    s.dates.forEach((d) => { const o = document.createElement("option"); o.value = d; o.textContent = d || "(no date)"; sel.appendChild(o); });
  }
  if (s.dates.length > 1) $("date-b").value = s.dates[1]; else $("change-box").hidden = true;
  const imagery = s.cubes.some((c) => c.imagery);
  if (!imagery) $("base").querySelector('option[value="source"]').disabled = true;
  if (s.basemap) $("basemap-url").value = s.basemap;
  $("base").value = imagery ? "source" : "pca";
  const date = s.dates[0];
  const raster = (url, maxzoom = 22) => ({ type: "raster", tiles: [url], tileSize: 256, maxzoom });
  map = new maplibregl.Map({
    container: "map", bounds: [[s.bounds[0], s.bounds[1]], [s.bounds[2], s.bounds[3]]],
    fitBoundsOptions: { padding: 20 }, attributionControl: false, preserveDrawingBuffer: true,
    boxZoom: false,  // shift-click adds a negative (shift-drag would otherwise zoom to a box)
    style: {
      version: 8,
      sources: {
        source: raster(tileUrl("source", { date })), pca: raster(tileUrl("pca", { date })),
        basemap: raster(s.basemap || "data:,", 19), heat: raster(tileUrl("heat", { query: "none" })),
        hits: { type: "geojson", data: fc([]) }, examples: { type: "geojson", data: fc([]) },
      },
      layers: [
        { id: "background", type: "background", paint: { "background-color": "#e8e8e8" } },
        { id: "basemap", type: "raster", source: "basemap", layout: { visibility: "none" } },
        { id: "source", type: "raster", source: "source", layout: { visibility: "none" } },
        { id: "pca", type: "raster", source: "pca", layout: { visibility: "none" } },
        { id: "heat", type: "raster", source: "heat", layout: { visibility: "none" }, paint: { "raster-opacity": 0.8, "raster-fade-duration": 0 } },
        { id: "hits", type: "line", source: "hits", paint: { "line-color": "#00e5ff", "line-width": 1.5 } },
        { id: "examples-fill", type: "fill", source: "examples", filter: ["==", ["get", "role"], "polygon"],
          paint: { "fill-color": "#2ecc40", "fill-opacity": 0.25, "fill-outline-color": "#2ecc40" } },
        { id: "examples-line", type: "line", source: "examples", filter: ["==", ["geometry-type"], "LineString"],
          paint: { "line-color": "#2ecc40", "line-width": 2, "line-dasharray": [2, 1] } },
        { id: "examples", type: "circle", source: "examples", filter: ["==", ["geometry-type"], "Point"],
          paint: { "circle-radius": 6, "circle-stroke-width": 2, "circle-stroke-color": "#fff",
                   "circle-color": ["match", ["get", "role"], "positive", "#2ecc40", "negative", "#ff4136", "#2ecc40"] } },
      ],
    },
  });
  window.geodinoMap = map;
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-right");
  map.on("load", () => {
    setBase();
    document.body.dataset.ready = "1";
    status("click a patch (shift-click: a negative), or draw a polygon");
  });
  map.on("click", (e) => {
    const p = [e.lngLat.lng, e.lngLat.lat];
    if (state.mode === "polygon") { state.draft.push(p); drawExamples(); return; }
    if ($("change").checked) { $("change").checked = false; }
    if (e.originalEvent.shiftKey) state.negatives.push(p); else state.positives.push(p);
    drawExamples();
    run();
  });
  map.on("dblclick", (e) => { if (state.mode === "polygon") { e.preventDefault(); finishPolygon(); } });
  $("base").addEventListener("change", setBase);
  $("basemap-url").addEventListener("change", setBase);
  $("date").addEventListener("change", setDate);
  $("date-b").addEventListener("change", () => { if ($("change").checked) runChange(); });
  $("change").addEventListener("change", () => {
    const t = $("threshold");
    if ($("change").checked) { t.min = 0; t.max = 2; t.value = 0; } else { t.min = -1; t.max = 1; t.value = -1; }
    run();
  });
  $("mode-click").addEventListener("click", () => setMode("click"));
  $("mode-polygon").addEventListener("click", () => setMode("polygon"));
  $("finish-polygon").addEventListener("click", finishPolygon);
  $("clear").addEventListener("click", () => {
    state.positives = []; state.negatives = []; state.polygons = []; setMode("click"); run();
  });
  $("k").addEventListener("change", refilter);
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = thresholdValue() === null ? "off" : thresholdValue().toFixed(2);
  });
  $("threshold").addEventListener("change", refilter);
  $("opacity").addEventListener("input", () => map.setPaintProperty("heat", "raster-opacity", parseFloat($("opacity").value)));
}

main().catch((e) => status(e.message, true));
