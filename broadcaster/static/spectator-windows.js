// The spectator page's windows and periods (loaded after spectator.js, whose
// top-level names it uses: board, feed, api, previous, meta, switchBoard).
// A board with windows (daily, weekly, monthly, seasons) gets a window picker,
// a period picker (the current period, live, or an archived one, read once
// over HTTP: it no longer changes) and when the current period resets. The
// live feed of a window follows its current period across resets (the server
// moves it); the countdown and the list of periods are read again then.
"use strict";

let windowName = params.get("window") || "all_time";
let periodName = params.get("period") || ""; // "": the window's current period, live
let boardDefinition = null;
const windowBar = document.getElementById("window-bar");
const windowSelect = document.getElementById("window");
const periodSelect = document.getElementById("period");
const resetEl = document.getElementById("reset");
const WINDOW_LABELS = { all_time: "All time", daily: "Daily", weekly: "Weekly",
                        monthly: "Monthly", season: "Season" };

const renderLive = feed.onSnapshot;
feed.onSnapshot = (snapshot) => {
  if (periodName) return; // an archived period is shown
  const shown = currentWindow()?.current?.period;
  if (snapshot.period && shown && snapshot.period !== shown) loadDefinition(); // a reset
  renderLive(snapshot);
};

function currentWindow() {
  return boardDefinition?.windows.find((w) => w.window === windowName) || null;
}

function option(value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label;
  return element;
}

function remember() {
  const query = new URLSearchParams(location.search);
  query.set("board", board);
  if (windowName === "all_time") query.delete("window"); else query.set("window", windowName);
  if (periodName) query.set("period", periodName); else query.delete("period");
  history.replaceState(null, "", `?${query}`);
}

// The board's windows, each with its current period and next reset.
async function loadDefinition() {
  const asked = board;
  try {
    const found = await api.board(asked);
    if (asked !== board) return;
    boardDefinition = found;
  } catch (error) {
    boardDefinition = null;
  }
  const windows = boardDefinition ? boardDefinition.windows.map((w) => w.window) : [];
  windowBar.hidden = !windows.some((w) => w !== "all_time");
  if (!windows.includes(windowName)) windowName = windows[0] || "all_time";
  windowSelect.replaceChildren(...windows.map((w) => option(w, WINDOW_LABELS[w] || w)));
  windowSelect.value = windowName;
  await loadPeriods();
  showCountdown();
}

// The current period and the archived ones, newest first, with their winners.
async function loadPeriods() {
  const current = currentWindow()?.current;
  const options = [option("", current && windowName !== "all_time"
    ? `Current (${current.period})` : "Current")];
  if (windowName !== "all_time") {
    try {
      const listing = await api.periods(board, windowName);
      for (const past of listing.periods) {
        const winner = past.winners[0];
        options.push(option(past.period, winner
          ? `${past.period}: won by ${winner.username} (${winner.score})` : past.period));
      }
    } catch (error) {
      // no archive to show: the current period still works
    }
  }
  periodSelect.replaceChildren(...options);
  if (![...periodSelect.options].some((o) => o.value === periodName)) periodName = "";
  periodSelect.value = periodName;
}

function duration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${minutes}m`;
  return `${minutes}m ${seconds % 60}s`;
}

// "Resets in 3h 12m" for the current period; what an archived period spans.
function showCountdown() {
  const current = currentWindow();
  if (periodName) {
    resetEl.textContent = `Archived period ${periodName}: final standings`;
  } else if (current && current.next_reset_at) {
    const at = new Date(current.next_reset_at);
    const left = at.getTime() - Date.now();
    resetEl.textContent = `Resets in ${duration(left)} (${at.toLocaleString()})`;
    resetEl.dataset.resetAt = current.next_reset_at;
    if (left <= -2000) loadDefinition(); // the server has moved the feed on by now
  } else {
    resetEl.textContent = "";
    delete resetEl.dataset.resetAt;
  }
}

// Show what the pickers say: the live feed of the window's current period, or
// an archived period read once.
async function showSelection() {
  previous = new Map();
  remember();
  showCountdown();
  if (!periodName) {
    feed.switchTo(board, windowName);
    return;
  }
  const asked = [board, windowName, periodName];
  try {
    const top = await api.top(board, 10, windowName, periodName);
    if (asked.join("\n") !== [board, windowName, periodName].join("\n")) return;
    renderLive({ ...top, ts: Date.now() });
    meta.textContent = `archived period ${periodName}`;
  } catch (error) {
    meta.textContent = `period ${periodName} cannot be read now`;
  }
}

windowSelect.addEventListener("change", async () => {
  windowName = windowSelect.value;
  periodName = "";
  await loadPeriods();
  showSelection();
});
periodSelect.addEventListener("change", () => {
  periodName = periodSelect.value;
  showSelection();
});

// Another board: its own windows (all time until they are known).
const switchBoardOnly = switchBoard;
switchBoard = function switchBoardAndWindows(wanted) {
  windowName = "all_time";
  periodName = "";
  feed.window = "all_time";
  switchBoardOnly(wanted);
  loadDefinition().then(showSelection);
};

setInterval(showCountdown, 1000);
loadDefinition().then(showSelection);
