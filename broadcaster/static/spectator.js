// The spectator page: the live top of a board (through scoreboard-client.js),
// rows built as text (never HTML: usernames are whatever players chose), rank
// movement, top-3 styling, the board list and player count from the API, an
// empty state, and "follow a player" (their rank and neighbours, follow.js).
// Top-level names (socket, connect, boardInput) are globals on purpose: the
// browser tests drive the page through them.
"use strict";

const params = new URLSearchParams(location.search);
let board = params.get("board") || "global";
let following = params.get("follow") || localStorage.getItem("scoreboard.follow") || "";
let socket = null;
let previous = new Map(); // user_id -> {rank, score} in the last snapshot shown
let lastSnapshot = null;

const api = new ScoreboardClient.Api(params.get("api") || ScoreboardClient.apiBaseFor(location));
const rows = document.getElementById("rows");
const statusEl = document.getElementById("status");
const meta = document.getElementById("meta");
const boardInput = document.getElementById("board");
const boardList = document.getElementById("board-list");
const playersEl = document.getElementById("players");
const emptyEl = document.getElementById("empty");
boardInput.value = board;

function setStatus(text, kind) {
  statusEl.textContent = text;
  statusEl.className = kind;
}

const feed = new ScoreboardClient.LiveFeed({
  url: ScoreboardClient.liveUrlFor(location),
  board,
  onSnapshot: render,
  onStatus: (state) => (state === "live" ? setStatus("live", "live")
                                         : setStatus("reconnecting", "down")),
  onSocket: (ws) => { socket = ws; },
  onMessage: (message) => followPanel.handle(message),
});
const followPanel = new FollowPanel(feed);

function connect() {
  return feed.connect();
}

// ``fn`` at most once per ``ms``; a call inside the window runs at its end
// (trailing edge), so the last change is always shown.
function throttled(fn, ms) {
  let last = 0;
  let timer = null;
  return (force = false) => {
    const wait = last + ms - Date.now();
    if (force || wait <= 0) {
      clearTimeout(timer);
      timer = null;
      last = Date.now();
      fn();
    } else if (timer === null) {
      timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
    }
  };
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  return td;
}

function movement(entry) {
  if (!previous.size) return null;
  const before = previous.get(entry.user_id);
  if (!before) return "new";
  if (before.rank > entry.rank) return "up";
  if (before.rank < entry.rank) return "down";
  return null;
}

function render(snapshot) {
  lastSnapshot = snapshot;
  const next = new Map();
  const fragment = document.createDocumentFragment();
  for (const entry of snapshot.entries) {
    const tr = document.createElement("tr");
    tr.dataset.userId = entry.user_id;
    tr.dataset.rank = String(entry.rank);
    const move = movement(entry);
    if (move) tr.dataset.move = move;
    if (entry.user_id === following) tr.dataset.following = "true";
    const name = cell(entry.username, "name");
    name.title = entry.username;
    tr.append(cell(entry.rank, "rank"), name, cell(entry.score, "score"));
    if (previous.size && previous.get(entry.user_id)?.score !== entry.score) {
      tr.classList.add("changed");
    }
    next.set(entry.user_id, { rank: entry.rank, score: entry.score });
    fragment.append(tr);
  }
  rows.replaceChildren(fragment);
  previous = next;
  emptyEl.hidden = snapshot.entries.length > 0;
  meta.textContent = `version ${snapshot.version} · ${new Date(snapshot.ts).toLocaleTimeString()}`;
  refreshBoards();
}

// The board list and this board's number of players, at most every 3 s. The
// page works without them (ingest unreachable, or this origin not allowed).
const refreshBoards = throttled(loadBoards, 3000);
async function loadBoards() {
  try {
    const boards = await api.boards();
    const options = boards.map((b) => {
      const option = document.createElement("option");
      option.value = b.board;
      option.label = `${b.size} player${b.size === 1 ? "" : "s"}`;
      return option;
    });
    boardList.replaceChildren(...options);
    const current = boards.find((b) => b.board === board);
    const size = current ? current.size : 0;
    playersEl.textContent = `${size} player${size === 1 ? "" : "s"}`;
    playersEl.hidden = false;
  } catch (error) {
    playersEl.hidden = true;
  }
}

function follow(userId) {
  following = userId;
  if (userId) localStorage.setItem("scoreboard.follow", userId);
  else localStorage.removeItem("scoreboard.follow");
  for (const tr of rows.children) {
    if (tr.dataset.userId === following) tr.dataset.following = "true";
    else delete tr.dataset.following;
  }
  followPanel.follow(following);
}

rows.addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr) follow(tr.dataset.userId === following ? "" : tr.dataset.userId);
});
document.getElementById("unfollow").addEventListener("click", () => follow(""));

document.getElementById("board-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const wanted = boardInput.value.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(wanted) || wanted === board) return;
  switchBoard(wanted);
});
// Picking a board from the list switches at once.
boardInput.addEventListener("change", () => {
  const wanted = boardInput.value.trim();
  if (/^[A-Za-z0-9_.:-]{1,64}$/.test(wanted) && wanted !== board) switchBoard(wanted);
});

function switchBoard(wanted) {
  board = wanted;
  previous = new Map();
  lastSnapshot = null;
  const query = new URLSearchParams(location.search);
  query.set("board", board);
  history.replaceState(null, "", `?${query}`);
  feed.switchTo(board);
  refreshBoards(true);
}

connect();
refreshBoards(true);
followPanel.follow(following);
