// "Follow a player" on the spectator page: their rank, score and the players
// right above and below them, live from the broadcaster's rank feed ("watch"
// on the page's own WebSocket), and who just overtook them. Its own file, so
// the rest of the page changes without touching it. Text only, never HTML:
// usernames are whatever players chose.
"use strict";

class FollowPanel {
  constructor(feed) {
    this.feed = feed;
    this.userId = "";
    this.panel = document.getElementById("following");
    this.nameEl = document.getElementById("following-name");
    this.placeEl = document.getElementById("following-place");
    this.newsEl = document.getElementById("following-news");
    this.list = document.getElementById("neighbours");
  }

  follow(userId) {
    this.userId = userId || "";
    this.panel.hidden = !this.userId;
    this.nameEl.textContent = this.userId;
    this.placeEl.textContent = "";
    this.newsEl.textContent = "";
    this.list.replaceChildren();
    this.feed.watch(this.userId);
  }

  // Every message of the feed other than snapshots.
  handle(message) {
    if (!this.userId || message.user_id !== this.userId) return;
    if (message.type === "rank") this.showRank(message);
    else if (message.type === "overtaken") {
      this.newsEl.textContent = `Overtaken by ${message.by.username}`;
    } else if (message.type === "error") {
      this.placeEl.textContent = message.code === "unknown_user"
        ? "No such player (yet)." : "Their place cannot be followed now.";
      this.list.replaceChildren();
    }
  }

  showRank(message) {
    this.nameEl.textContent = message.username || message.user_id;
    if (message.rank === null) {
      this.placeEl.textContent = "Not on this board right now.";
      this.list.replaceChildren();
      return;
    }
    this.placeEl.textContent = `Rank ${message.rank} with ${message.score}`;
    const me = { rank: message.rank, user_id: message.user_id,
                 username: message.username, score: message.score };
    this.list.replaceChildren(
      ...[message.above, me, message.below].filter(Boolean).map((e) => this.item(e)));
  }

  item(entry) {
    const li = document.createElement("li");
    for (const [className, text] of [["rank", entry.rank], ["name", entry.username],
                                     ["score", entry.score]]) {
      const span = document.createElement("span");
      span.className = className;
      span.textContent = String(text);
      if (className === "name") span.title = String(text);
      li.append(span);
    }
    if (entry.user_id === this.userId) li.className = "me";
    li.dataset.userId = entry.user_id;
    return li;
  }
}
