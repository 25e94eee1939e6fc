// A small browser client of the live scoreboard, with no dependencies: the
// HTTP API (ingest) and the live feed (this broadcaster's WebSocket) with
// reconnect. Loaded as a classic script; everything is on window.ScoreboardClient.
//
//   const api = new ScoreboardClient.Api(ScoreboardClient.apiBaseFor(location));
//   const feed = new ScoreboardClient.LiveFeed({url: ScoreboardClient.liveUrlFor(location),
//     board: "global", window: "daily", onSnapshot: (s) => ..., onStatus: (state) => ...,
//     onMessage: (m) => ...});  // the rank feed's "rank", "overtaken", errors
//   feed.connect();
//   feed.watch("player-id");  // follow one player (again after each reconnect); "" stops
//
// A feed of a window (daily, weekly, ...) follows its current period: at the
// period's end the server sends the next period's first snapshot (its
// ``period`` changes and its versions start again).
"use strict";

(function (global) {
  // A refusal in the service's envelope: {"error": {"code", "message"}}.
  class ApiError extends Error {
    constructor(status, code, message) {
      super(`${status} ${code}: ${message}`);
      this.status = status;
      this.code = code;
    }
  }

  // Ingest beside this broadcaster: same host, the port below (8001 -> 8000).
  function apiBaseFor(loc) {
    const port = Number(loc.port || (loc.protocol === "https:" ? 443 : 80));
    return `${loc.protocol}//${loc.hostname}:${port - 1}`;
  }

  function liveUrlFor(loc) {
    return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}`;
  }

  class Api {
    constructor(base) {
      this.base = String(base).replace(/\/$/, "");
    }

    async get(path, params = {}) {
      const query = new URLSearchParams(
        Object.entries(params).filter(([, value]) => value !== undefined && value !== null));
      const search = query.toString();
      const response = await fetch(`${this.base}${path}${search ? `?${search}` : ""}`,
                                   { headers: { Accept: "application/json" } });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        const error = (body && body.error) || {};
        throw new ApiError(response.status, error.code || "unexpected_answer",
                           error.message || `HTTP ${response.status}`);
      }
      return body;
    }

    async boards() { return (await this.get("/api/boards")).boards; }
    // One board's definition: its windows with their current period and next_reset_at.
    board(board) { return this.get(`/api/boards/${encodeURIComponent(board)}`); }
    // A window's archived periods, newest first, with their winners.
    periods(board, window, limit = 20) {
      return this.get(`/api/boards/${encodeURIComponent(board)}/periods`, { window, limit });
    }
    // ``window`` and ``period`` are optional (all_time; the window's current period).
    top(board, limit = 10, window = undefined, period = undefined) {
      return this.get("/api/scores/top", { board, limit, window, period });
    }
    user(userId, board, window = undefined, period = undefined) {
      return this.get(`/api/scores/users/${encodeURIComponent(userId)}`,
                      { board, window, period });
    }
    around(userId, board, radius = 2, window = undefined, period = undefined) {
      return this.get(`/api/scores/around/${encodeURIComponent(userId)}`,
                      { board, radius, window, period });
    }
  }

  // Snapshots of one board as they come. Reconnects with capped exponential
  // backoff plus jitter; a board switched while connecting is subscribed to
  // once the socket opens; stale or repeated versions are not handed out.
  class LiveFeed {
    constructor({ url, board, window = "all_time", onSnapshot, onStatus = () => {},
                  onSocket = () => {}, onMessage = () => {} }) {
      this.url = url;
      this.board = board;
      this.window = window;
      this.period = null; // of the last snapshot handed out (a window's feed)
      this.onSnapshot = onSnapshot;
      this.onMessage = onMessage;
      this.watching = "";
      this.onStatus = onStatus;
      this.onSocket = onSocket;
      this.attempt = 0;
      this.lastVersion = -1;
      this.socket = null;
    }

    connect() {
      const requested = this.board;
      const requestedWindow = this.window;
      const windowQuery = requestedWindow === "all_time" ? ""
        : `&window=${encodeURIComponent(requestedWindow)}`;
      const socket = new WebSocket(
        `${this.url}/ws?board=${encodeURIComponent(requested)}${windowQuery}`);
      this.socket = socket;
      this.onSocket(socket);
      socket.onopen = () => {
        this.attempt = 0;
        this.onStatus("live");
        if (this.board !== requested || this.window !== requestedWindow) {
          socket.send(this.subscribeMessage());
        }
        if (this.watching) socket.send(JSON.stringify({ type: "watch", user_id: this.watching }));
      };
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type !== "snapshot") {
          // errors name no board; the rank feed's messages name the board and, on a
          // window, its window and period, as snapshots do
          if (!message.board || (message.board === this.board
              && (message.window || "all_time") === this.window)) this.onMessage(message);
          return;
        }
        if (message.board !== this.board) return;
        if ((message.window || "all_time") !== this.window) return;
        if ((message.period || null) !== this.period) { // a new period: versions restart
          this.period = message.period || null;
          this.lastVersion = -1;
        }
        if (message.version <= this.lastVersion) return;
        this.lastVersion = message.version;
        this.onSnapshot(message);
      };
      socket.onclose = () => {
        this.onStatus("reconnecting");
        const delay = Math.min(10000, 250 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
        this.attempt += 1;
        setTimeout(() => this.connect(), delay);
      };
      return socket;
    }

    switchTo(board, window = this.window) {
      this.board = board;
      this.window = window;
      this.period = null;
      this.lastVersion = -1;
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(this.subscribeMessage());
      }
    }

    // Follow one player's rank and neighbours ("rank" and "overtaken" messages on
    // onMessage); the server keeps following them across board switches.
    watch(userId) {
      const previous = this.watching;
      this.watching = userId || "";
      if (previous === this.watching || !this.socket
          || this.socket.readyState !== WebSocket.OPEN) return;
      if (previous) this.socket.send(JSON.stringify({ type: "unwatch", user_id: previous }));
      if (this.watching) {
        this.socket.send(JSON.stringify({ type: "watch", user_id: this.watching }));
      }
    }

    subscribeMessage() {
      return JSON.stringify({ type: "subscribe", board: this.board, window: this.window });
    }
  }

  global.ScoreboardClient = { Api, ApiError, LiveFeed, apiBaseFor, liveUrlFor };
})(window);
