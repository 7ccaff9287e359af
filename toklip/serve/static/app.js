// The toklip page: tokenize a dropped image, show its VQ reconstruction and token grid, score labels, and
// (when the server has a generator) generate images of a class, and (with a VLM) chat about an image, the reply
// streamed as it is generated.
// Plain JS, no build step, nothing loaded from elsewhere. Every user string goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the File being shown
let info = null; // GET /v1/info
let objectUrls = [];

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) message = response.status + ": " + body.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

async function loadInfo() {
  try {
    info = await (await api("/v1/info")).json();
    $("model").textContent = `${info.name}: ${info.image_size}px → ${info.grid[0]}×${info.grid[1]} tokens, ` +
      `${info.vocab_size} codes, ${info.attention} attention, on ${info.device}`;
  } catch (e) {
    info = null;
    $("model").textContent = "model info unavailable (" + e.message + ")";
  }
  setupGenerator();
  setupChat();
}

const GEN_INPUTS = ["gen-class", "gen-prompt", "gen-n", "gen-cfg", "gen-seed", "gen-run"];

function setupGenerator() {
  const gen = info && info.generator;
  GEN_INPUTS.forEach((id) => { $(id).disabled = !gen; });
  $("generate").dataset.available = gen ? "true" : "false";
  if (!gen) {
    $("gen-note").textContent = info
      ? "This server runs without a generator (start toklip serve with --generator FOLDER to generate images)."
      : "Generator info unavailable.";
    return;
  }
  const fusion = gen.fusion ? `, fused ${gen.fusion} inputs` : "";
  const t2i = gen.model_type === "t2i";
  $("gen-class-label").hidden = t2i;
  $("gen-prompt-label").hidden = !t2i;
  $("gen-note").textContent = `${gen.name}: ` + (t2i
    ? `text-conditional, prompts of up to ${gen.max_prompt_chars} characters, `
    : `class-conditional, ${gen.num_classes} classes, `) + `${gen.grid[0]}×${gen.grid[1]} tokens${fusion}`;
  if (t2i) $("gen-prompt").maxLength = gen.max_prompt_chars;
  $("gen-cfg").value = String(gen.default_cfg);
  $("gen-class").max = String(gen.num_classes - 1);
  $("gen-n").max = String(info.limits.max_generate_images);
  $("gen-n").value = String(Math.min(Number($("gen-n").value) || 1, info.limits.max_generate_images));
  if (!gen.guidance) {
    $("gen-cfg").value = "1";
    $("gen-cfg").max = "1";
  }
}

function intField(id, name) {
  const text = $(id).value.trim();
  const value = Number(text);
  if (text === "" || !Number.isInteger(value)) throw new Error(`${name} must be a whole number`);
  return value;
}

async function generateImages() {
  try {
    const t2i = info.generator.model_type === "t2i";
    const body = { n: intField("gen-n", "images"), format: "json" };
    if (t2i) body.prompt = $("gen-prompt").value;
    else body.class = intField("gen-class", "class");
    const cfg = Number($("gen-cfg").value);
    if (!Number.isFinite(cfg)) throw new Error("cfg must be a number");
    body.cfg = cfg;
    if ($("gen-seed").value.trim() !== "") body.seed = intField("gen-seed", "seed");
    setStatus("generating…");
    $("gen-run").disabled = true;
    const out = await (await api("/v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    const images = out.images.map((b64, i) => {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + b64;
      img.alt = t2i ? `generated image ${i + 1} of "${out.prompts[i]}"` : `generated image ${i + 1} of class ${out.classes[i]}`;
      if (t2i) img.dataset.prompt = out.prompts[i];
      else img.dataset.class = String(out.classes[i]);
      return img;
    });
    $("gen-images").replaceChildren(...images);
    $("gen-info").textContent = `${out.images.length} image(s) of ${t2i ? `"${body.prompt}"` : `class ${body.class}`}, cfg ${out.cfg}, ` +
      `seed ${out.seed} (send it again for the same images), ${out.timing.generate_s.toFixed(2)} s`;
    $("gen-info").dataset.seed = String(out.seed);
    setStatus("done");
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("gen-run").disabled = !(info && info.generator);
  }
}

let chatTurns = []; // the conversation so far: [{role, content}]; the server keeps no state

function setupChat() {
  const chat = info && info.chat;
  $("chat").hidden = !chat;
  $("chat").dataset.available = chat ? "true" : "false";
  if (!chat) return;
  $("chat-note").textContent = `${chat.name}: an image takes ${chat.image_tokens} tokens; replies of up to ` +
    `${chat.limits.max_new_tokens} tokens, streamed`;
  $("chat-input").maxLength = chat.limits.max_chars;
}

function chatEntry(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.textContent = text;
  $("chat-log").append(li);
  return li;
}

function resetChat() {
  chatTurns = [];
  $("chat-log").replaceChildren();
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read the image file"));
    reader.readAsDataURL(file);
  });
}

// Reads a text/event-stream answer of POST /v1/chat: `data: {"text": piece}` events, then `data: [DONE]`
// (or `data: {"error": {...}}`). Calls onText with each piece; returns the whole reply.
async function readReply(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let reply = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "") continue;
      if (data === "[DONE]") return reply;
      const message = JSON.parse(data);
      if (message.error) throw new Error(message.error.status + ": " + message.error.message);
      if (typeof message.text === "string") {
        reply += message.text;
        onText(message.text);
      }
    }
  }
  throw new Error("the reply stopped before it was complete (the server's request timeout?)");
}

async function sendChat() {
  const text = $("chat-input").value.trim();
  if (!text) {
    setStatus("type a message first");
    return;
  }
  const turns = [...chatTurns, { role: "user", content: text }];
  $("chat-send").disabled = true;
  chatEntry("user", text);
  const answer = chatEntry("assistant pending", "…");
  try {
    const body = { messages: turns, stream: true };
    const file = $("chat-image").files[0];
    if (file) body.image = await dataUrl(file);
    setStatus("thinking…");
    const response = await api("/v1/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let shown = "";
    const reply = await readReply(response, (piece) => {
      shown += piece;
      answer.textContent = shown;
      answer.className = "assistant";
    });
    answer.textContent = reply;
    answer.className = "assistant";
    chatTurns = [...turns, { role: "assistant", content: reply }];
    $("chat-input").value = "";
    setStatus("done");
  } catch (e) {
    answer.remove();
    $("chat-log").lastChild.remove(); // the user turn the server did not answer; it stays in the box
    setStatus(e.message, true);
  } finally {
    $("chat-send").disabled = false;
  }
}

function trackUrl(url) {
  objectUrls.push(url);
  return url;
}

function colour(t) {
  // a small perceptual-ish ramp: dark blue -> teal -> yellow
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
}

function drawGrid(indices, grid, vocab) {
  const [h, w] = grid;
  const canvas = $("grid");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  indices.forEach((id, n) => {
    const [r, g, b] = colour(vocab > 1 ? id / (vocab - 1) : 0);
    img.data.set([r, g, b, 255], n * 4);
  });
  ctx.putImageData(img, 0, 0);
  canvas.dataset.indices = JSON.stringify(indices);
  canvas.onmousemove = (ev) => {
    const rect = canvas.getBoundingClientRect();
    const col = Math.floor(((ev.clientX - rect.left) / rect.width) * w);
    const row = Math.floor(((ev.clientY - rect.top) / rect.height) * h);
    if (row >= 0 && row < h && col >= 0 && col < w) {
      $("cell").textContent = `(row ${row}, col ${col}): code ${indices[row * w + col]}`;
    }
  };
}

async function handle(file) {
  if (!file) return;
  current = file;
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
  $("original").src = trackUrl(URL.createObjectURL(file));
  $("recon").removeAttribute("src");
  $("scores").replaceChildren();
  try {
    setStatus("tokenizing…");
    const form = new FormData();
    form.append("image", file);
    const tok = await (await api("/v1/tokenize", { method: "POST", body: form })).json();
    const indices = tok.indices[0];
    drawGrid(indices, tok.grid, tok.vocab_size);
    setStatus("decoding…");
    const decoded = await api("/v1/decode", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ indices: [indices] }),
    });
    $("recon").src = trackUrl(URL.createObjectURL(await decoded.blob()));
    const distinct = new Set(indices).size;
    $("recon-info").textContent = `(${indices.length} tokens, ${distinct} distinct codes)`;
    await score();
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function score() {
  if (!current) {
    setStatus("choose an image first");
    return;
  }
  const labels = $("labels").value.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
  if (labels.length === 0) {
    setStatus("type at least one label");
    return;
  }
  try {
    setStatus("scoring…");
    const form = new FormData();
    form.append("image", current);
    labels.forEach((label) => form.append("texts", label));
    const sim = await (await api("/v1/similarity", { method: "POST", body: form })).json();
    const probs = sim.probs[0];
    const cosine = sim.cosine[0];
    const order = labels.map((_, i) => i).sort((a, b) => probs[b] - probs[a]);
    const items = order.map((i) => {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (probs[i] * 12).toFixed(2) + "em";
      const text = document.createElement("span");
      text.textContent = `${(probs[i] * 100).toFixed(1)}%  ${labels[i]}  (cosine ${cosine[i].toFixed(3)})`;
      li.append(bar, text);
      li.dataset.label = labels[i];
      li.dataset.prob = String(probs[i]);
      return li;
    });
    $("scores").replaceChildren(...items);
    setStatus("done");
  } catch (e) {
    setStatus(e.message, true);
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => handle(ev.target.files[0]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) handle(ev.dataTransfer.files[0]);
  });
  $("score").addEventListener("click", score);
  $("gen-run").addEventListener("click", generateImages);
  $("chat-send").addEventListener("click", sendChat);
  $("chat-reset").addEventListener("click", resetChat);
  $("chat-image").addEventListener("change", resetChat); // another image: another conversation
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) sendChat();
  });
  $("apikey").addEventListener("change", loadInfo);
  loadInfo();
}

setup();
