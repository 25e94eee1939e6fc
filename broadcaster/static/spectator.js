// The spectator page: one WebSocket, a snapshot per message, rows rebuilt as
// text (never HTML: usernames are whatever players chose), changed rows marked,
// reconnect with capped exponential backoff plus jitter.
"use strict";

const params = new URLSearchParams(location.search);
let board = params.get("board") || "global";
let socket = null;
let attempt = 0;
let lastVersion = -1;
let previous = new Map(); // user_id -> score in the last snapshot shown

const rows = document.getElementById("rows");
const statusEl = document.getElementById("status");
const meta = document.getElementById("meta");
const boardInput = document.getElementById("board");
boardInput.value = board;

function setStatus(text, kind) {
  statusEl.textContent = text;
  statusEl.className = kind;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

function render(snapshot) {
  if (snapshot.board !== board || snapshot.version <= lastVersion) return;
  lastVersion = snapshot.version;
  const next = new Map();
  const fragment = document.createDocumentFragment();
  for (const entry of snapshot.entries) {
    const tr = document.createElement("tr");
    tr.dataset.userId = entry.user_id;
    tr.append(cell(entry.rank, "rank"), cell(entry.username, "name"), cell(entry.score, "score"));
    if (previous.size && previous.get(entry.user_id) !== entry.score) tr.classList.add("changed");
    next.set(entry.user_id, entry.score);
    fragment.append(tr);
  }
  rows.replaceChildren(fragment);
  previous = next;
  meta.textContent = `version ${snapshot.version} · ${new Date(snapshot.ts).toLocaleTimeString()}`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const requested = board;
  socket = new WebSocket(`${scheme}://${location.host}/ws?board=${encodeURIComponent(requested)}`);
  socket.onopen = (event) => {
    attempt = 0;
    setStatus("live", "live");
    // The board was switched while this socket was connecting (nothing could be sent then).
    if (board !== requested) event.target.send(JSON.stringify({ type: "subscribe", board }));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "snapshot") render(message);
  };
  socket.onclose = () => {
    setStatus("reconnecting", "down");
    const delay = Math.min(10000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    setTimeout(connect, delay);
  };
}

document.getElementById("board-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const wanted = boardInput.value.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(wanted) || wanted === board) return;
  board = wanted;
  lastVersion = -1;
  previous = new Map();
  history.replaceState(null, "", `?board=${encodeURIComponent(board)}`);
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ type: "subscribe", board }));
  }
});

connect();
