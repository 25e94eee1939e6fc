// A small browser client of the live scoreboard, with no dependencies: the
// HTTP API (ingest) and the live feed (this broadcaster's WebSocket) with
// reconnect. Loaded as a classic script; everything is on window.ScoreboardClient.
//
//   const api = new ScoreboardClient.Api(ScoreboardClient.apiBaseFor(location));
//   const feed = new ScoreboardClient.LiveFeed({url: ScoreboardClient.liveUrlFor(location),
//     board: "global", onSnapshot: (s) => ..., onStatus: (state) => ...,
//     onMessage: (m) => ...});  // the rank feed's "rank", "overtaken", errors
//   feed.connect();
//   feed.watch("player-id");  // follow one player (again after each reconnect); "" stops
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
    top(board, limit = 10) { return this.get("/api/scores/top", { board, limit }); }
    user(userId, board) {
      return this.get(`/api/scores/users/${encodeURIComponent(userId)}`, { board });
    }
    around(userId, board, radius = 2) {
      return this.get(`/api/scores/around/${encodeURIComponent(userId)}`, { board, radius });
    }
  }

  // Snapshots of one board as they come. Reconnects with capped exponential
  // backoff plus jitter; a board switched while connecting is subscribed to
  // once the socket opens; stale or repeated versions are not handed out.
  class LiveFeed {
    constructor({ url, board, onSnapshot, onStatus = () => {}, onSocket = () => {},
                  onMessage = () => {} }) {
      this.url = url;
      this.board = board;
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
      const socket = new WebSocket(`${this.url}/ws?board=${encodeURIComponent(requested)}`);
      this.socket = socket;
      this.onSocket(socket);
      socket.onopen = () => {
        this.attempt = 0;
        this.onStatus("live");
        if (this.board !== requested) socket.send(this.subscribeMessage());
        if (this.watching) socket.send(JSON.stringify({ type: "watch", user_id: this.watching }));
      };
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type !== "snapshot") {
          if (!message.board || message.board === this.board) this.onMessage(message);
          return;
        }
        if (message.board !== this.board) return;
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

    switchTo(board) {
      this.board = board;
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
      return JSON.stringify({ type: "subscribe", board: this.board });
    }
  }

  global.ScoreboardClient = { Api, ApiError, LiveFeed, apiBaseFor, liveUrlFor };
})(window);
