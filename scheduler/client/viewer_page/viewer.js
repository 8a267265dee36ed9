// gpumesh live viewer: sends camera poses over a WebSocket, draws the frames that come back, counts them.
// Protocol and server: scheduler/client/viewer.py. Frames are RGBA8, sRGB, premultiplied alpha, row 0 on top.
// Query parameters: orbit=auto (turn by itself), rate=N (poses per second at most, default 60),
// speed=DEG (auto-orbit degrees per second, default 30), keep=N (keep the read-back pixels of the last N
// frames for tests), outstanding=N (poses in flight before waiting, default 3), gl=0 (2D canvas only).
"use strict";

const params = new URLSearchParams(location.search);
const AUTO = params.get("orbit") === "auto";
const RATE = Math.max(1, parseFloat(params.get("rate") || "60"));
const SPEED = parseFloat(params.get("speed") || "30");
const KEEP = Math.max(0, parseInt(params.get("keep") || "0", 10));
const OUTSTANDING = Math.max(1, parseInt(params.get("outstanding") || "3", 10));

// ---- quaternions [x, y, z, w] and vectors ------------------------------------------------------------------
const qmul = (a, b) => [
  a[3] * b[0] + a[0] * b[3] + a[1] * b[2] - a[2] * b[1],
  a[3] * b[1] - a[0] * b[2] + a[1] * b[3] + a[2] * b[0],
  a[3] * b[2] + a[0] * b[1] - a[1] * b[0] + a[2] * b[3],
  a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2],
];
const qaxis = (axis, angle) => {
  const s = Math.sin(angle / 2), n = Math.hypot(...axis);
  return [axis[0] / n * s, axis[1] / n * s, axis[2] / n * s, Math.cos(angle / 2)];
};
const qnorm = (q) => { const n = Math.hypot(...q); return q.map((c) => c / n); };
const qrot = (q, v) => { const r = qmul(qmul(q, [v[0], v[1], v[2], 0]), [-q[0], -q[1], -q[2], q[3]]); return [r[0], r[1], r[2]]; };
const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];

// ---- state --------------------------------------------------------------------------------------------------
const state = {
  hello: null, connected: false, seq: 0, yaw: 0, pitch: 0, zoom: 1, dirty: true, xr: null,
  pending: new Map(),      // seq -> {t: send time, pose}
  lastAnswered: -1,
  shown: 0, dropped: 0, skipped: 0, stale: 0, errors: [],
  latencies: [],           // ms, pose sent -> frame drawn, every frame shown
  shownTimes: [],          // performance.now() of recent frames, for fps
  log: [],                 // {seq, pose, latency_ms, mesh_ms, tiles, workers} per frame shown
  kept: [],                // {seq, pixels (base64 RGBA, row 0 on top)} of the last KEEP frames
  renderer: "none",
};

function orbitPose() {
  const h = state.hello, cam = h.camera;
  const q0 = cam.orientation;
  const right0 = qrot(q0, [1, 0, 0]);
  const turn = qmul(qaxis([0, 1, 0], state.yaw), qaxis(right0, state.pitch));
  const p = add(h.target, scale(qrot(turn, sub(cam.position, h.target)), state.zoom));
  return { position: p, orientation: qnorm(qmul(turn, q0)) };
}

// ---- display: WebGL (premultiplied, exact), 2D canvas as a fallback -------------------------------------------
const canvas = document.getElementById("view");
let gl = null, glTex = null, glProg = null, frameSize = [0, 0], lastPixels = null;

function initGL(xrCompatible) {
  if (params.get("gl") === "0") return null;
  const g = canvas.getContext("webgl", { premultipliedAlpha: true, alpha: true, preserveDrawingBuffer: true,
                                        antialias: false, xrCompatible });
  if (!g) return null;
  const vs = "attribute vec2 p; varying vec2 uv; void main() { uv = vec2(p.x * 0.5 + 0.5, 0.5 - p.y * 0.5);"
           + " gl_Position = vec4(p, 0.0, 1.0); }";
  const fs = "precision mediump float; varying vec2 uv; uniform sampler2D tex;"
           + " void main() { gl_FragColor = texture2D(tex, uv); }";
  const prog = g.createProgram();
  for (const [type, src] of [[g.VERTEX_SHADER, vs], [g.FRAGMENT_SHADER, fs]]) {
    const sh = g.createShader(type);
    g.shaderSource(sh, src);
    g.compileShader(sh);
    g.attachShader(prog, sh);
  }
  g.linkProgram(prog);
  if (!g.getProgramParameter(prog, g.LINK_STATUS)) return null;
  g.useProgram(prog);
  const buf = g.createBuffer();
  g.bindBuffer(g.ARRAY_BUFFER, buf);
  g.bufferData(g.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), g.STATIC_DRAW);
  const loc = g.getAttribLocation(prog, "p");
  g.enableVertexAttribArray(loc);
  g.vertexAttribPointer(loc, 2, g.FLOAT, false, 0, 0);
  glTex = g.createTexture();
  g.bindTexture(g.TEXTURE_2D, glTex);
  for (const [k, v] of [[g.TEXTURE_MIN_FILTER, g.NEAREST], [g.TEXTURE_MAG_FILTER, g.NEAREST],
                        [g.TEXTURE_WRAP_S, g.CLAMP_TO_EDGE], [g.TEXTURE_WRAP_T, g.CLAMP_TO_EDGE]]) {
    g.texParameteri(g.TEXTURE_2D, k, v);
  }
  g.pixelStorei(g.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);  // the frames are premultiplied already
  glProg = prog;
  return g;
}

function drawQuad(viewport) {
  gl.viewport(...viewport);
  gl.clearColor(0, 0, 0, 0);
  gl.clear(gl.COLOR_BUFFER_BIT);
  gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
}

function show(w, h, rgba) {
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  frameSize = [w, h];
  if (gl) {
    gl.bindTexture(gl.TEXTURE_2D, glTex);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, w, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
    if (!state.xr) {
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      drawQuad([0, 0, w, h]);
    }
  } else {
    // ImageData wants straight alpha: divide in linear light would be exact; this 8-bit divide is close
    const straight = new Uint8ClampedArray(rgba.length);
    for (let i = 0; i < rgba.length; i += 4) {
      const a = rgba[i + 3];
      if (a === 0) continue;
      straight[i] = rgba[i] * 255 / a; straight[i + 1] = rgba[i + 1] * 255 / a; straight[i + 2] = rgba[i + 2] * 255 / a;
      straight[i + 3] = a;
    }
    canvas.getContext("2d").putImageData(new ImageData(straight, w, h), 0, 0);
  }
}

function readBack() {
  const [w, h] = frameSize;
  if (gl) {
    const out = new Uint8Array(w * h * 4), flipped = new Uint8Array(w * h * 4);
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, out);
    for (let y = 0; y < h; y++) flipped.set(out.subarray((h - 1 - y) * w * 4, (h - y) * w * 4), y * w * 4);
    return flipped;
  }
  return new Uint8Array(canvas.getContext("2d").getImageData(0, 0, w, h).data.buffer);
}

const b64 = (bytes) => { let s = ""; for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000)); return btoa(s); };

// ---- the WebSocket ------------------------------------------------------------------------------------------
let ws = null;

function answered(seq) {
  // the server answers every pose once: a frame, or dropped / skipped / stale
  const p = state.pending.get(seq);
  state.pending.delete(seq);
  state.lastAnswered = Math.max(state.lastAnswered, seq);
  return p;
}

function onFrame(buf) {
  const view = new DataView(buf);
  const hlen = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, hlen)));
  const rgba = new Uint8Array(buf, 4 + hlen, header.width * header.height * 4);
  const sent = answered(header.seq);
  show(header.width, header.height, rgba);
  const now = performance.now();
  state.shown += 1;
  state.shownTimes.push(now);
  while (state.shownTimes.length && now - state.shownTimes[0] > 1000) state.shownTimes.shift();
  const latency = sent ? now - sent.t : null;
  if (latency !== null) state.latencies.push(latency);
  state.log.push({ seq: header.seq, pose: sent ? sent.pose : null, latency_ms: latency, mesh_ms: header.mesh_ms,
                   tiles: header.tiles, workers: header.workers, width: header.width, height: header.height });
  if (KEEP > 0) {
    lastPixels = readBack();
    state.kept.push({ seq: header.seq, pixels: b64(lastPixels) });
    if (state.kept.length > KEEP) state.kept.shift();
  }
  hud();
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.connected = true; hud(); };
  ws.onclose = () => { state.connected = false; hud(); setTimeout(connect, 1000); };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { onFrame(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") {
      state.hello = msg;
      canvas.width = msg.width; canvas.height = msg.height;
      state.dirty = true;
    } else if (msg.type === "dropped") {
      answered(msg.seq);
      state.dropped += 1;
    } else if (msg.type === "skipped") {
      answered(msg.seq);
      state.skipped += 1;
    } else if (msg.type === "stale") {
      answered(msg.seq);
      state.stale += 1;
    } else if (msg.type === "error") {
      state.errors.push(msg.message);
    }
    hud();
  };
}

function sendPose(pose) {
  if (!ws || ws.readyState !== WebSocket.OPEN || !state.hello) return false;
  if (state.pending.size >= OUTSTANDING) return false;
  const seq = state.seq++;
  state.pending.set(seq, { t: performance.now(), pose });
  ws.send(JSON.stringify({ type: "pose", seq, position: pose.position, orientation: pose.orientation }));
  return true;
}

// ---- input: mouse orbit, wheel zoom; auto orbit ------------------------------------------------------------
let drag = null;
canvas.addEventListener("pointerdown", (e) => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
canvas.addEventListener("pointerup", () => { drag = null; });
canvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  state.yaw -= (e.clientX - drag[0]) * 0.01;
  state.pitch = Math.max(-1.2, Math.min(1.2, state.pitch - (e.clientY - drag[1]) * 0.01));
  drag = [e.clientX, e.clientY];
  state.dirty = true;
});
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  state.zoom = Math.max(0.2, Math.min(5, state.zoom * Math.exp(e.deltaY * 0.001)));
  state.dirty = true;
}, { passive: false });
canvas.addEventListener("dblclick", () => { state.yaw = 0; state.pitch = 0; state.zoom = 1; state.dirty = true; });

let lastTick = performance.now();
setInterval(() => {
  const now = performance.now();
  if (AUTO && state.hello && !state.xr) { state.yaw += (SPEED * Math.PI / 180) * (now - lastTick) / 1000; state.dirty = true; }
  lastTick = now;
  if (state.dirty && state.hello && !state.xr && sendPose(orbitPose())) state.dirty = false;
}, 1000 / RATE);

// ---- the counters -------------------------------------------------------------------------------------------
function pct(a, q) { if (!a.length) return null; const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(q / 100 * s.length))]; }
function hud() {
  const last = state.latencies.length ? state.latencies[state.latencies.length - 1] : null;
  const f = (v) => (v === null ? "-" : v.toFixed(1));
  const h = state.hello;
  document.getElementById("hud").textContent =
    (state.connected ? "connected" : "disconnected") + (h ? `  ${h.width}x${h.height}` : "") + `  [${state.renderer}]\n`
    + `latency ${f(last)} ms (p50 ${f(pct(state.latencies, 50))}, p99 ${f(pct(state.latencies, 99))})\n`
    + `${state.shownTimes.length} fps  shown ${state.shown}\n`
    + `dropped ${state.dropped}  skipped ${state.skipped}  stale ${state.stale}`
    + (state.errors.length ? `\nerror: ${state.errors[state.errors.length - 1]}` : "");
}
setInterval(hud, 500);

// ---- WebXR: device poses drive the camera; the latest frame is drawn into each view -----------------------
async function setupXR() {
  const button = document.getElementById("xr");
  if (!navigator.xr || !gl) return;
  let mode = null;
  for (const m of ["immersive-ar", "immersive-vr"]) {
    try { if (await navigator.xr.isSessionSupported(m)) { mode = m; break; } } catch (e) { /* not offered */ }
  }
  if (!mode) return;
  button.textContent = mode === "immersive-ar" ? "Enter AR" : "Enter VR";
  button.style.display = "block";
  button.onclick = async () => {
    const session = await navigator.xr.requestSession(mode, { requiredFeatures: ["local"] });
    await gl.makeXRCompatible();
    session.updateRenderState({ baseLayer: new XRWebGLLayer(session, gl, { alpha: true }) });
    const space = await session.requestReferenceSpace("local");
    state.xr = session;
    session.addEventListener("end", () => { state.xr = null; state.dirty = true; });
    const onXRFrame = (t, xrFrame) => {
      session.requestAnimationFrame(onXRFrame);
      const pose = xrFrame.getViewerPose(space);
      if (!pose) return;
      // the XR space's origin is where the session started: place it at the scene camera
      const cam = state.hello.camera, tr = pose.transform;
      const p = add(cam.position, qrot(cam.orientation, [tr.position.x, tr.position.y, tr.position.z]));
      const q = qnorm(qmul(cam.orientation, [tr.orientation.x, tr.orientation.y, tr.orientation.z, tr.orientation.w]));
      sendPose({ position: p, orientation: q });
      const layer = session.renderState.baseLayer;
      gl.bindFramebuffer(gl.FRAMEBUFFER, layer.framebuffer);
      for (const view of pose.views) {
        const vp = layer.getViewport(view);
        drawQuad([vp.x, vp.y, vp.width, vp.height]);
      }
    };
    session.requestAnimationFrame(onXRFrame);
  };
}

// any script error on the page is shown on it and counted (the tests require none)
window.addEventListener("error", (e) => state.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => state.errors.push(String(e.reason)));

gl = initGL(true);
state.renderer = gl ? "webgl" : "2d";
window.viewer = { state, stats: () => ({ shown: state.shown, dropped: state.dropped, skipped: state.skipped,
                                          stale: state.stale, sent: state.seq, pending: state.pending.size,
                                          errors: state.errors.length, renderer: state.renderer,
                                          connected: state.connected, hello: state.hello }),
                  log: () => state.log, kept: () => state.kept };
connect();
setupXR();
hud();
