// The covo-edge page: talk to the model through the OpenAI Realtime protocol (GA), as any client would.
// The microphone goes out as 20 ms PCM16 input_audio_buffer.append events; reply audio plays as it arrives.
// Everything measured is in window.covoStats (read by the tests; shown on the page).

const RATE = 24000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const stats = (window.covoStats = {
  state: "idle", mode: "vad", captured: 0, capturedRms: 0, sent: 0, received: 0, played: 0,
  playedByItem: {}, transcript: "", turns: [], truncates: [], errors: [],
});

let ws = null, ctx = null, capture = null, playback = null, session = null;
let energy = 0; // sum of squares of every captured sample
let pttHeld = false;
let endOfSpeech = null; // performance.now() when the user's last turn ended
let current = null; // the running response
let lastItem = null; // the last assistant item: {id, received, played, startedAt, running}
let pendingTruncate = null; // a truncate that waits for its response to end
let closing = false;
let notice = null; // the message on screen that asks for an action, if any
let userLine = null, speechStart = 0, pttStart = 0; // the user's turn on the page

function setState(state) {
  stats.state = state;
  $("state").textContent = state;
  $("state").dataset.state = state;
}

function showError(text, action = null) {
  stats.errors.push(text);
  notice = action;
  $("error").textContent = text;
  $("error").hidden = false;
  $("reconnect").hidden = action !== "reconnect";
  $("newconv").hidden = action !== "new";
}

function clearError() {
  notice = null;
  $("error").hidden = true;
  $("reconnect").hidden = true;
  $("newconv").hidden = true;
}

function b64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function pcmToFloat(b64text) {
  const bytes = Uint8Array.from(atob(b64text), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  return Float32Array.from(pcm, (v) => v / 32768);
}

function send(type, fields = {}) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({type, ...fields}));
}

function line(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("transcript").append(li);
  li.scrollIntoView({block: "end"});
  return li;
}

async function start() {
  $("start").disabled = true;
  clearError();
  try {
    ctx = new AudioContext({sampleRate: RATE});
    await ctx.audioWorklet.addModule("/page/worklets.js");
    const mic = await navigator.mediaDevices.getUserMedia(
      {audio: {echoCancellation: true, noiseSuppression: true, channelCount: 1}});
    capture = new AudioWorkletNode(ctx, "covo-capture");
    playback = new AudioWorkletNode(ctx, "covo-playback");
    playback.connect(ctx.destination);
    ctx.createMediaStreamSource(mic).connect(capture);
    capture.port.onmessage = ({data}) => onMicrophone(data);
    playback.port.onmessage = ({data}) => onPlayback(data);
    await ctx.resume();
  } catch (e) {
    $("start").disabled = false;
    showError(e.name === "NotAllowedError"
      ? "The microphone was refused: allow it for this page in the browser's site settings, then press Start."
      : `The microphone could not start (${e.name}: ${e.message}).`);
    return;
  }
  connect();
}

function connect() {
  clearError();
  closing = false;
  const key = params.get("key");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime?model=covo-audio-chat`;
  ws = new WebSocket(url, key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"]);
  setState("connecting");
  ws.onopen = () => setState("connected");
  ws.onmessage = (e) => onEvent(JSON.parse(e.data));
  ws.onclose = (e) => {
    setState("disconnected");
    $("talk").disabled = true;
    // A message that already says what to do (busy, context full, key) stays; otherwise the server is gone.
    if (!closing && notice === null) showError(`The server is gone (closed ${e.code}${e.reason ? ": " + e.reason : ""}).`, "reconnect");
  };
}

function restart() {
  closing = true;
  if (ws) ws.close();
  stats.errors = [];
  lastItem = current = pendingTruncate = null;
  playback.port.postMessage({type: "flush"});
  connect();
}

function configure() {
  const vad = stats.mode === "vad";
  const s = {type: "realtime", audio: {input: {turn_detection: vad ? {type: "server_vad"} : null}}};
  if (params.get("max_output_tokens")) s.max_output_tokens = Number(params.get("max_output_tokens"));
  send("session.update", {session: s});
  $("talk").disabled = vad;
}

function onMicrophone({pcm, rms}) {
  stats.captured += pcm.byteLength / 2;
  energy += rms * rms * (pcm.byteLength / 2);
  stats.capturedRms = Math.sqrt(energy / stats.captured);
  $("level").value = Math.min(1, rms * 4);
  if (stats.state === "connected" && (stats.mode === "vad" || pttHeld)) {
    send("input_audio_buffer.append", {audio: b64(pcm)});
    stats.sent += pcm.byteLength / 2;
  }
}

function onPlayback(data) {
  if (data.type === "started" && lastItem && data.item === lastItem.id && lastItem.startedAt === null) {
    lastItem.startedAt = performance.now();
    if (lastItem.turn) heardAfter(lastItem, lastItem.turn); // the reply ended before its audio began to play
    return;
  }
  if (data.type === "played" || data.type === "flushed") {
    stats.playedByItem = data.played;
    stats.played = Object.values(data.played).reduce((a, b) => a + b, 0);
    if (lastItem) lastItem.played = data.played[lastItem.id] || 0;
  }
  if (data.type === "flushed" && lastItem) truncateTo(lastItem, lastItem.played);
}

function playing() {
  return lastItem !== null && (lastItem.running || lastItem.played < lastItem.received);
}

function bargeIn() {
  // Stop at once; the flush reply says how much of the reply was heard, and that is what the model keeps.
  // Under server VAD the server cancels the response itself (interrupt_response); push-to-talk cancels here.
  playback.port.postMessage({type: "flush"});
  if (current && stats.mode === "ptt") send("response.cancel");
}

function truncateTo(item, samples) {
  const ms = Math.floor((1000 * samples) / RATE);
  if (item.running) pendingTruncate = {item, ms};
  else sendTruncate(item, ms);
}

function sendTruncate(item, ms) {
  stats.truncates.push({item: item.id, audio_end_ms: ms, received_ms: Math.floor((1000 * item.received) / RATE)});
  send("conversation.item.truncate", {item_id: item.id, content_index: 0, audio_end_ms: ms});
}

function onEvent(e) {
  switch (e.type) {
    case "session.created":
      session = e.session;
      configure();
      break;
    case "session.updated":
      session = e.session;
      $("voice").value = session.audio.output.voice ?? "";
      break;
    case "input_audio_buffer.speech_started":
      userLine = line("user", "You: speaking…");
      speechStart = e.audio_start_ms;
      if (playing()) bargeIn();
      break;
    case "input_audio_buffer.speech_stopped":
      endOfSpeech = performance.now();
      if (userLine) userLine.textContent = `You: ${((e.audio_end_ms - speechStart) / 1000).toFixed(1)} s of speech`;
      break;
    case "response.created":
      current = {id: e.response.id, text: "", li: line("assistant", "")};
      break;
    case "response.output_item.added":
      lastItem = {id: e.item.id, received: 0, played: 0, startedAt: null, running: true, endOfSpeech};
      current.item = lastItem;
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      current.text += e.delta;
      current.li.textContent = current.text;
      stats.transcript += e.delta;
      break;
    case "response.output_audio.delta": {
      const samples = pcmToFloat(e.delta);
      current.item.received += samples.length;
      stats.received += samples.length;
      playback.port.postMessage({type: "push", item: e.item_id, samples}, [samples.buffer]);
      break;
    }
    case "response.done":
      onResponseDone(e);
      break;
    case "conversation.item.truncated":
      if (current === null && lastItem) $("transcript").lastElementChild?.classList.add("cut");
      break;
    case "error":
      onError(e.error);
      break;
  }
}

function onResponseDone(e) {
  const item = current.item;
  const timings = e.covo_timings || {};
  const turn = {
    response: e.response.id, item: item ? item.id : null, status: e.response.status, text: current.text,
    received: item ? item.received : 0, first_audio_heard_ms: null, server: timings,
  };
  stats.turns.push(turn);
  const server = timings.first_audio_ms != null ? `; server: first audio sent ${Math.round(timings.first_audio_ms)} ms` : "";
  const runtime = timings.runtime_ms && timings.runtime_ms.first_audio != null
    ? ` (runtime ${Math.round(timings.runtime_ms.first_audio)} ms: encoder ${Math.round(timings.runtime_ms.encoder || 0)}, ` +
      `prefill ${Math.round(timings.runtime_ms.prefill || 0)}, decode ${Math.round(timings.runtime_ms["first_audio.decode"] || 0)})`
    : "";
  const note = document.createElement("small");
  note.dataset.rest = ` — ${e.response.status}` + server + runtime;
  note.textContent = note.dataset.rest;
  current.li.append(note);
  if (item) {
    item.running = false;
    item.turn = turn;
    item.note = note;
    if (item.startedAt !== null) heardAfter(item, turn);
  }
  if (pendingTruncate && pendingTruncate.item === item) {
    sendTruncate(item, pendingTruncate.ms);
    pendingTruncate = null;
  }
  current = null;
}

function heardAfter(item, turn) {
  // What the person waited: from the end of their speech reaching the page to the reply's first sample playing.
  if (item.endOfSpeech === null) return;
  turn.first_audio_heard_ms = Math.round(item.startedAt - item.endOfSpeech);
  item.note.textContent = `${item.note.dataset.rest}; you heard it ${turn.first_audio_heard_ms} ms after you stopped`;
}

function onError(error) {
  if (error.code === "session_limit_reached") {
    showError("The server is busy: all its sessions are in use. Try again in a moment.", "reconnect");
  } else if (error.code === "context_full") {
    showError("This conversation has filled the model's memory.", "new");
  } else if (error.code === "invalid_api_key") {
    showError("The server wants an API key: open this page with ?key=YOUR_KEY.", "reconnect");
  } else {
    stats.errors.push(`${error.code}: ${error.message}`);
    console.warn("covo-edge:", error.code, error.message);
  }
}

function pressTalk() {
  if (stats.mode !== "ptt" || pttHeld || stats.state !== "connected") return;
  if (playing()) bargeIn();
  pttHeld = true;
  send("input_audio_buffer.clear");
  userLine = line("user", "You: speaking… (release to send)");
  pttStart = performance.now();
  $("talk").classList.add("held");
}

function releaseTalk() {
  if (!pttHeld) return;
  pttHeld = false;
  endOfSpeech = performance.now();
  userLine.textContent = `You: ${((endOfSpeech - pttStart) / 1000).toFixed(1)} s of speech`;
  $("talk").classList.remove("held");
  send("input_audio_buffer.commit");
  send("response.create");
}

async function loadVoices() {
  try {
    const health = await (await fetch("/healthz")).json();
    for (const v of health.voices) $("voice").append(new Option(v, v));
    $("voice").disabled = !health.voices.length;
  } catch {
    $("voice").disabled = true;
  }
}

$("start").onclick = start;
$("reconnect").onclick = restart;
$("newconv").onclick = restart;
$("voice").onchange = () => send("session.update", {session: {type: "realtime", audio: {output: {voice: $("voice").value}}}});
for (const radio of document.querySelectorAll("input[name=mode]")) {
  radio.onchange = () => { stats.mode = radio.value; if (stats.state === "connected") configure(); };
}
$("talk").onpointerdown = pressTalk;
$("talk").onpointerup = releaseTalk;
$("talk").onpointerleave = releaseTalk;
addEventListener("keydown", (e) => { if (e.code === "Space" && !e.repeat && stats.mode === "ptt") { e.preventDefault(); pressTalk(); } });
addEventListener("keyup", (e) => { if (e.code === "Space") releaseTalk(); });
loadVoices();
if (params.get("autostart") === "1") start();
