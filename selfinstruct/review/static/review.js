// The review page: one sampled example at a time, three yes/no questions, keys only.
// Talks to the server in selfinstruct/review/server.py; every answer is a PUT that
// the server writes to disk before it replies.
"use strict";

const state = {
  session: null,     // GET /api/session
  position: 0,       // index into session.examples
  example: null,     // GET /api/examples/<id>
  question: 0,       // index of the highlighted question
  saving: Promise.resolve(),
  sent: 0,           // answers sent so far; only the newest reply replaces the shown label
  target: 0,         // the example being moved to (keys pressed fast add up)
  loading: 0,        // example loads in flight; keys pressed meanwhile wait for them
  queued: [],
};

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.error || `${method} ${path}: HTTP ${response.status}`);
  }
  return data;
}

function questions() { return state.session.questions; }

function answers() {
  const label = state.example && state.example.label;
  const out = { note: label ? label.note : "" };
  for (const q of questions()) out[q.name] = label ? label[q.name] : null;
  return out;
}

function complete(values) {
  return questions().every((q) => values[q.name] === true || values[q.name] === false);
}

function renderProgress() {
  const s = state.session;
  $("progress").max = s.size;
  $("progress").value = s.answered;
  $("progress-text").textContent = `${s.answered} / ${s.size} answered`;
}

function setText(id, text, empty) {
  const node = $(id);
  node.textContent = text ? text : empty;
  node.classList.toggle("empty", !text);
}

function renderExample() {
  const e = state.example;
  const s = state.session;
  $("position").textContent = `Example ${state.position + 1} of ${s.size}`;
  const meta = [`id ${e.id}`];
  if (e.round !== null && e.round !== undefined) meta.push(`round ${e.round}`);
  if (e.is_classification === true) meta.push("classification task");
  if (e.is_classification === false) meta.push("generation task");
  if (e.stratum) meta.push(`stratum: ${e.stratum}`);
  $("meta").textContent = "· " + meta.join(" · ");
  setText("instruction", e.instruction, "(empty)");
  setText("input", e.input, "(no input)");
  setText("output", e.output, "(empty)");
  if (e.nearest_instruction) {
    const rouge = e.nearest_rouge_l === null || e.nearest_rouge_l === undefined
      ? "" : ` (ROUGE-L ${Number(e.nearest_rouge_l).toFixed(2)})`;
    $("nearest").textContent = `Nearest pool instruction${rouge}: ${e.nearest_instruction}`;
  } else {
    $("nearest").textContent = "Nearest pool instruction: none overlapped.";
  }
  $("note").value = answers().note || "";
  renderQuestions();
  renderJudge();
  $("prev").disabled = state.position === 0;
  $("next").disabled = state.position === s.size - 1;
  $("done").hidden = true;
}

function renderQuestions() {
  const box = $("questions");
  box.textContent = "";
  const values = answers();
  questions().forEach((q, k) => {
    const row = document.createElement("div");
    row.className = "question" + (k === state.question ? " current" : "");
    row.dataset.question = q.name;
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = String(k + 1);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = q.text;
    row.append(num, text);
    for (const [value, word] of [[true, "yes"], [false, "no"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = word + (values[q.name] === value ? " chosen" : "");
      button.textContent = word === "yes" ? "yes (y)" : "no (n)";
      button.dataset.answer = word;
      button.addEventListener("click", () => { state.question = k; answer(value); });
      row.append(button);
    }
    box.append(row);
  });
}

function renderJudge() {
  const box = $("judge");
  const s = state.session;
  box.textContent = "";
  box.classList.remove("hidden-verdict");
  if (!s.judged) { box.hidden = true; return; }
  box.hidden = false;
  const verdict = state.example.judge;
  if (!verdict) {
    box.classList.add("hidden-verdict");
    box.textContent = "The judge's scores are shown once you have answered all three questions.";
    return;
  }
  const title = document.createElement("h3");
  title.textContent = `Judge${verdict.judge ? " (" + verdict.judge + ")" : ""}`;
  box.append(title);
  if (verdict.scores.overall === null) {
    const p = document.createElement("p");
    p.textContent = `No readable verdict${verdict.reason ? " (" + verdict.reason + ")" : ""}.`;
    box.append(p);
    return;
  }
  const table = document.createElement("table");
  const [low, high] = s.scale;
  const middle = (low + high) / 2;
  const values = answers();
  for (const q of [...questions(), { name: "overall", text: "Overall" }]) {
    const tr = document.createElement("tr");
    const name = document.createElement("th");
    name.textContent = q.name;
    const score = document.createElement("td");
    score.className = "score";
    const value = verdict.scores[q.name];
    score.textContent = value === null ? "–" : `${value} / ${high}`;
    if (q.name !== "overall" && value !== null && values[q.name] !== null) {
      const same = (value > middle) === values[q.name];
      score.classList.add(same ? "agree" : "disagree");
      score.title = same ? "agrees with your answer" : "differs from your answer";
    }
    const why = document.createElement("td");
    why.textContent = q.name === "overall" ? "" : (verdict.rationales[q.name] || "");
    tr.append(name, score, why);
    table.append(tr);
  }
  box.append(table);
}

function firstOpenQuestion(values) {
  const k = questions().findIndex((q) => values[q.name] === null || values[q.name] === undefined);
  return k < 0 ? 0 : k;
}

async function load(position) {
  const s = state.session;
  position = Math.max(0, Math.min(s.size - 1, position));
  state.target = position;
  const id = s.examples[position].id;
  state.loading += 1;
  let example;
  try {
    example = await api("GET", `/api/examples/${encodeURIComponent(id)}`);
  } finally {
    state.loading -= 1;
  }
  if (position === state.target) {  // a later move wins
    state.position = position;
    state.example = example;
    state.question = firstOpenQuestion(answers());
    history.replaceState(null, "", `#${position + 1}`);
    renderExample();
  }
  if (!state.loading) {
    const keys = state.queued.splice(0);
    for (const key of keys) handleKey(key);
  }
}

function save(values) {
  // Answers are sent one after another, in the order given.
  const id = state.example.id;
  const position = state.position;
  const number = ++state.sent;
  state.saving = state.saving.then(async () => {
    $("saved").textContent = "saving…";
    try {
      const reply = await api("PUT", `/api/labels/${encodeURIComponent(id)}`, values);
      state.session.answered = reply.answered;
      state.session.examples[position].complete = reply.label ? reply.label.complete : false;
      // an older reply would undo answers given since it was sent
      if (number === state.sent && state.example && state.example.id === id) {
        state.example.label = reply.label;
        state.example.judge = reply.judge;
        renderQuestions();
        renderJudge();
      }
      renderProgress();
      showError("");
      $("saved").textContent = "saved";
      showDoneIfFinished();
    } catch (err) {
      $("saved").textContent = "not saved";
      showError(`Not saved: ${err.message}`);
    }
  });
  return state.saving;
}

function answer(value) {
  const values = answers();
  const q = questions()[state.question].name;
  values[q] = value;
  values.note = $("note").value;
  // optimistic: show the choice now, move on to the next open question
  state.example.label = Object.assign({}, state.example.label || {}, values);
  const next = questions().findIndex((item, k) => k > state.question &&
    (values[item.name] === null || values[item.name] === undefined));
  if (next >= 0) state.question = next;
  else if (!complete(values)) state.question = firstOpenQuestion(values);
  renderQuestions();
  return save(values);
}

function saveNote() {
  const values = answers();
  if (($("note").value || "") === (values.note || "")) return state.saving;
  values.note = $("note").value;
  state.example.label = Object.assign({}, state.example.label || {}, values);
  return save(values);
}

function showDoneIfFinished() {
  const s = state.session;
  const box = $("done");
  if (s.answered === s.size) {
    box.hidden = false;
    box.textContent = `All ${s.size} examples are answered (labels in ${s.labels_file}). ` +
      "You can close this page; `selfinstruct inspect` shows the quality table.";
  } else {
    box.hidden = true;
  }
}

function nextOpen() {
  const s = state.session;
  for (let step = 1; step <= s.size; step++) {
    const k = (state.position + step) % s.size;
    if (!s.examples[k].complete) return k;
  }
  return null;
}

async function move(position) {
  state.target = Math.max(0, Math.min(state.session.size - 1, position));
  await saveNote();
  await state.saving;
  try {
    await load(state.target);
  } catch (err) {
    state.target = state.position;  // stay where we are; drop the keys meant for it
    state.queued = [];
    showError(`Cannot load example: ${err.message}`);
  }
}

function onKey(event) {
  if (event.target === $("note")) {
    if (event.key === "Escape") { $("note").blur(); saveNote(); event.preventDefault(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey || !state.example) return;
  if (handleKey(event.key)) event.preventDefault();
}

// One key's action; returns whether the key is one of the page's.
function handleKey(key) {
  const known = ["y", "Y", "n", "N", "1", "2", "3", "ArrowUp", "ArrowDown", "ArrowRight",
                 "Enter", "ArrowLeft", "u", "e"];
  if (!known.includes(key)) return false;
  if (state.loading || state.target !== state.position) {  // wait for the example moved to
    state.queued.push(key);
    return true;
  }
  const count = questions().length;
  const last = state.session.size - 1;
  if (key === "y" || key === "Y") answer(true);
  else if (key === "n" || key === "N") answer(false);
  else if (["1", "2", "3"].includes(key)) {
    if (Number(key) <= count) { state.question = Number(key) - 1; renderQuestions(); }
  } else if (key === "ArrowUp") { state.question = (state.question + count - 1) % count; renderQuestions(); }
  else if (key === "ArrowDown") { state.question = (state.question + 1) % count; renderQuestions(); }
  else if (key === "ArrowRight" || key === "Enter") {
    if (state.target < last) move(state.target + 1);
  } else if (key === "ArrowLeft") {
    if (state.target > 0) move(state.target - 1);
  } else if (key === "u") {
    const k = nextOpen();
    if (k !== null) move(k);
  } else if (key === "e") { $("note").focus(); }
  return true;
}

async function start() {
  try {
    state.session = await api("GET", "/api/session");
  } catch (err) {
    showError(`Cannot load the review: ${err.message}`);
    return;
  }
  const s = state.session;
  document.title = `review · ${s.run}`;
  $("run").textContent = s.run;
  $("reviewer").textContent = s.reviewer;
  renderProgress();
  const fromHash = parseInt(location.hash.slice(1), 10);
  const position = Number.isInteger(fromHash) && fromHash >= 1 && fromHash <= s.size
    ? fromHash - 1 : (s.first_open === null ? 0 : s.first_open);
  $("main").hidden = false;
  try {
    await load(position);
  } catch (err) {
    showError(`Cannot load example: ${err.message}`);
  }
  showDoneIfFinished();
  document.addEventListener("keydown", onKey);
  $("note").addEventListener("blur", () => saveNote());
  $("prev").addEventListener("click", () => handleKey("ArrowLeft"));
  $("next").addEventListener("click", () => handleKey("ArrowRight"));
}

start();
