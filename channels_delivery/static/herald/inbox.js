/*
 * Herald's embeddable in-app inbox: a bell with an unread badge and a dropdown
 * of the subscriber's messages, updated live over /ws/inbox.
 *
 * Plain JavaScript, no dependencies, no build step. Load it from Herald and mount it
 * on any element of your page:
 *
 *   <script src="https://herald.example.com/static/herald/inbox.js"></script>
 *   <div id="inbox"></div>
 *   <script>
 *     HeraldInbox.mount(document.getElementById("inbox"), {
 *       baseUrl: "https://herald.example.com",
 *       tenant: "acme",
 *       subscriberId: "user-42",
 *       subscriberHash: "<hex HMAC-SHA256 from your backend>",
 *     });
 *   </script>
 *
 * or as an element: <herald-inbox base-url="…" tenant="…" subscriber-id="…"
 * subscriber-hash="…"></herald-inbox>.
 *
 * Message content is the tenant's rendered template, which may carry anything its
 * authors or its events put in it: every piece of it reaches the page as text
 * (textContent, attributes), never as markup, and only http(s) links are followed.
 * The widget lives in a shadow root so the page's CSS and the widget's do not mix.
 */
(function (global) {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  // Mirror channels_delivery.consumers: credentials refused, retrying will not help.
  var CLOSE_UNAUTHORIZED = 4401;
  var CLOSE_FORBIDDEN = 4403;
  var RECONNECT_MIN_MS = 1000;
  var RECONNECT_MAX_MS = 30000;
  var BADGE_MAX = 99;

  var STYLE = [
    ":host { position: relative; display: inline-block; font: 14px/1.4 system-ui, sans-serif;",
    "  color: var(--herald-text, #1f2328); }",
    "* { box-sizing: border-box; }",
    "button { font: inherit; cursor: pointer; }",
    ".bell { position: relative; display: inline-flex; align-items: center; justify-content: center;",
    "  width: 40px; height: 40px; border: 0; border-radius: 50%; background: transparent;",
    "  color: inherit; }",
    ".bell:hover, .bell:focus-visible { background: rgba(127, 127, 127, 0.15); }",
    ".bell svg { width: 22px; height: 22px; }",
    ".badge { position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px;",
    "  padding: 0 5px; border-radius: 9px; background: var(--herald-accent, #d1242f);",
    "  color: #fff; font-size: 11px; font-weight: 600; line-height: 18px; text-align: center; }",
    ".badge[hidden], .panel[hidden], .more[hidden], .empty[hidden], .error[hidden] {",
    "  display: none; }",
    ".panel { position: absolute; z-index: 2147483000; top: 44px; right: 0; width: 360px;",
    "  max-width: calc(100vw - 16px); max-height: 480px; display: flex; flex-direction: column;",
    "  background: var(--herald-background, #fff); border: 1px solid rgba(127, 127, 127, 0.3);",
    "  border-radius: 8px; box-shadow: 0 8px 24px rgba(0, 0, 0, 0.15); overflow: hidden; }",
    ".panel.start { right: auto; left: 0; }",
    ".header { display: flex; align-items: center; justify-content: space-between;",
    "  padding: 10px 12px; border-bottom: 1px solid rgba(127, 127, 127, 0.2); }",
    ".heading { font-weight: 600; }",
    ".link { border: 0; background: none; padding: 2px 4px; color: var(--herald-link, #0969da); }",
    ".link:disabled { color: rgba(127, 127, 127, 0.8); cursor: default; }",
    ".list { list-style: none; margin: 0; padding: 0; overflow-y: auto; flex: 1; }",
    ".item { position: relative; display: flex; gap: 8px; padding: 10px 12px; cursor: pointer;",
    "  border-bottom: 1px solid rgba(127, 127, 127, 0.12); }",
    ".item:hover, .item:focus-visible { background: rgba(127, 127, 127, 0.08); outline: none; }",
    ".item.unread { background: var(--herald-unread-background, rgba(9, 105, 218, 0.06)); }",
    ".dot { flex: none; width: 8px; height: 8px; margin-top: 6px; border-radius: 50%; }",
    ".item.unread .dot { background: var(--herald-link, #0969da); }",
    ".content { flex: 1; min-width: 0; }",
    ".title { overflow-wrap: anywhere; }",
    ".item.unread .title { font-weight: 600; }",
    ".body { color: var(--herald-muted, #59636e); overflow-wrap: anywhere; white-space: pre-line; }",
    ".time { display: block; margin-top: 2px; color: var(--herald-muted, #59636e);",
    "  font-size: 12px; }",
    ".archive { flex: none; align-self: flex-start; border: 0; background: none; padding: 2px 4px;",
    "  color: var(--herald-muted, #59636e); font-size: 12px; visibility: hidden; }",
    ".item:hover .archive, .item:focus-within .archive { visibility: visible; }",
    ".empty, .error { margin: 0; padding: 16px 12px; color: var(--herald-muted, #59636e);",
    "  text-align: center; }",
    ".error { color: var(--herald-accent, #d1242f); }",
    ".more { margin: 6px auto 8px; }",
  ].join("\n");

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function bellIcon() {
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "2");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    ["M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9", "M13.73 21a2 2 0 0 1-3.46 0"].forEach(
      function (d) {
        var path = document.createElementNS(SVG_NS, "path");
        path.setAttribute("d", d);
        svg.appendChild(path);
      }
    );
    return svg;
  }

  /** The URL to follow for an item, or null: only http(s), relative ones against the page. */
  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    var url;
    try {
      url = new URL(value, document.baseURI);
    } catch (error) {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  function relativeTime(date, locale) {
    var seconds = Math.round((date.getTime() - Date.now()) / 1000);
    var units = [
      ["year", 31536000],
      ["month", 2592000],
      ["week", 604800],
      ["day", 86400],
      ["hour", 3600],
      ["minute", 60],
    ];
    var format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1]) {
        return format.format(Math.round(seconds / units[i][1]), units[i][0]);
      }
    }
    return format.format(0, "second");
  }

  function trimSlash(url) {
    return String(url).replace(/\/+$/, "");
  }

  function required(options, name) {
    var value = options[name];
    if (typeof value !== "string" || !value) {
      throw new Error("HeraldInbox.mount: option '" + name + "' is required (a non-empty string).");
    }
    return value;
  }

  function Inbox(host, options) {
    this.host = host;
    this.baseUrl = trimSlash(required(options, "baseUrl"));
    this.tenant = required(options, "tenant");
    this.subscriberId = required(options, "subscriberId");
    this.subscriberHash = required(options, "subscriberHash");
    this.socketUrl = options.socketUrl || this.baseUrl.replace(/^http/, "ws") + "/ws/inbox";
    this.pageSize = options.pageSize || 20;
    this.locale = options.locale || undefined;
    this.target = options.target || "_self";
    this.labels = Object.assign(
      {
        bell: "Notifications",
        heading: "Notifications",
        markAllRead: "Mark all read",
        archive: "Archive",
        loadMore: "Load more",
        empty: "No notifications yet",
      },
      options.labels || {}
    );
    this.items = []; // newest first, as the API lists them
    this.unreadCount = 0;
    this.nextCursor = null;
    this.loading = false;
    this.socket = null;
    this.reconnectDelay = RECONNECT_MIN_MS;
    this.reconnectTimer = null;
    this.connectedOnce = false;
    this.firstPageLoaded = false;
    this.changes = 0;
    this.destroyed = false;
    this.render();
    this.loadFirstPage();
    this.connect();
  }

  Inbox.prototype.render = function () {
    var root = this.host.shadowRoot || this.host.attachShadow({ mode: "open" });
    while (root.firstChild) root.removeChild(root.firstChild);
    this.root = root;
    root.appendChild(el("style", null, STYLE));

    this.bell = el("button", "bell");
    this.bell.type = "button";
    this.bell.setAttribute("part", "bell");
    this.bell.setAttribute("aria-haspopup", "true");
    this.bell.setAttribute("aria-expanded", "false");
    this.bell.appendChild(bellIcon());
    this.badge = el("span", "badge");
    this.badge.hidden = true;
    this.bell.appendChild(this.badge);
    root.appendChild(this.bell);

    this.panel = el("div", "panel");
    this.panel.hidden = true;
    this.panel.setAttribute("part", "panel");
    this.panel.setAttribute("role", "dialog");
    this.panel.setAttribute("aria-label", this.labels.heading);
    var header = el("div", "header");
    header.appendChild(el("span", "heading", this.labels.heading));
    this.readAllButton = el("button", "link read-all", this.labels.markAllRead);
    this.readAllButton.type = "button";
    header.appendChild(this.readAllButton);
    this.panel.appendChild(header);
    this.errorLine = el("p", "error");
    this.errorLine.hidden = true;
    this.errorLine.setAttribute("role", "alert");
    this.panel.appendChild(this.errorLine);
    this.list = el("ul", "list");
    this.panel.appendChild(this.list);
    this.emptyLine = el("p", "empty", this.labels.empty);
    this.panel.appendChild(this.emptyLine);
    this.moreButton = el("button", "link more", this.labels.loadMore);
    this.moreButton.type = "button";
    this.moreButton.hidden = true;
    this.panel.appendChild(this.moreButton);
    root.appendChild(this.panel);

    var self = this;
    this.bell.addEventListener("click", function () {
      self.toggle();
    });
    this.readAllButton.addEventListener("click", function () {
      self.markAllRead();
    });
    this.moreButton.addEventListener("click", function () {
      self.loadMore();
    });
    this.onDocumentClick = function (event) {
      if (!self.panel.hidden && event.composedPath().indexOf(self.host) === -1) self.toggle(false);
    };
    this.onKeyDown = function (event) {
      if (event.key === "Escape" && !self.panel.hidden) {
        self.toggle(false);
        self.bell.focus();
      }
    };
    document.addEventListener("click", this.onDocumentClick, true);
    document.addEventListener("keydown", this.onKeyDown);
    this.update();
  };

  Inbox.prototype.toggle = function (open) {
    var show = open === undefined ? this.panel.hidden : open;
    this.panel.hidden = !show;
    this.bell.setAttribute("aria-expanded", String(show));
    if (!show) return;
    this.update(); // refreshes the relative times
    // The panel hangs from the bell's right edge; a bell near the page's left edge
    // would push it off screen, so it then hangs from the left edge instead.
    this.panel.classList.remove("start");
    if (this.panel.getBoundingClientRect().left < 0) this.panel.classList.add("start");
  };

  Inbox.prototype.update = function () {
    var count = this.unreadCount;
    this.badge.hidden = count <= 0;
    this.badge.textContent = count > BADGE_MAX ? BADGE_MAX + "+" : String(count);
    this.bell.setAttribute(
      "aria-label",
      count > 0 ? this.labels.bell + " (" + count + " unread)" : this.labels.bell
    );
    this.readAllButton.disabled = count <= 0;
    // Rows are rebuilt; keyboard focus stays on the message it was on.
    var focused = this.root.activeElement && this.root.activeElement.closest(".item");
    var focusedId = focused ? focused.dataset.id : null;
    var rows = this.items.map(this.renderItem, this);
    this.list.replaceChildren.apply(this.list, rows);
    if (focusedId) {
      rows.forEach(function (row) {
        if (row.dataset.id === focusedId) row.focus();
      });
    }
    this.emptyLine.hidden = this.items.length > 0 || this.loading;
    this.moreButton.hidden = !this.nextCursor;
    this.moreButton.disabled = this.loading;
  };

  Inbox.prototype.renderItem = function (item) {
    var self = this;
    var row = el("li", "item" + (item.read_at ? "" : " unread"));
    row.tabIndex = 0;
    row.dataset.id = item.id;
    row.appendChild(el("span", "dot"));
    var content = el("div", "content");
    if (item.title) content.appendChild(el("div", "title", item.title));
    if (item.body) content.appendChild(el("div", "body", item.body));
    var created = new Date(item.created_at);
    if (!isNaN(created.getTime())) {
      var time = el("time", "time", relativeTime(created, this.locale));
      time.dateTime = created.toISOString();
      time.title = created.toLocaleString(this.locale);
      content.appendChild(time);
    }
    row.appendChild(content);
    var archive = el("button", "archive", this.labels.archive);
    archive.type = "button";
    archive.setAttribute("aria-label", this.labels.archive + ": " + (item.title || item.body));
    archive.addEventListener("click", function (event) {
      event.stopPropagation();
      self.archive(item);
    });
    row.appendChild(archive);
    row.addEventListener("click", function () {
      self.open(item);
    });
    row.addEventListener("keydown", function (event) {
      if (event.target === row && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        self.open(item);
      }
    });
    return row;
  };

  // --- HTTP --------------------------------------------------------------------

  Inbox.prototype.request = function (method, path) {
    var self = this;
    return fetch(this.baseUrl + "/api/v1/inbox" + path, {
      method: method,
      mode: "cors",
      credentials: "omit",
      cache: "no-store",
      headers: {
        Accept: "application/json",
        "X-Herald-Tenant": this.tenant,
        "X-Herald-Subscriber": this.subscriberId,
        "X-Herald-Subscriber-Hash": this.subscriberHash,
      },
    }).then(function (response) {
      return response.json().then(
        function (body) {
          if (!response.ok) throw self.problem(response.status, body);
          return body;
        },
        function () {
          throw self.problem(response.status, null);
        }
      );
    });
  };

  Inbox.prototype.problem = function (status, body) {
    var detail = body && body.detail ? body.detail : "Herald answered " + status + ".";
    var error = new Error(detail);
    error.status = status;
    error.problem = body;
    return error;
  };

  Inbox.prototype.fail = function (error) {
    if (this.destroyed) return;
    this.errorLine.textContent = error && error.message ? error.message : String(error);
    this.errorLine.hidden = false;
    this.host.dispatchEvent(new CustomEvent("herald:error", { detail: error }));
  };

  Inbox.prototype.clearError = function () {
    this.errorLine.hidden = true;
    this.errorLine.textContent = "";
  };

  Inbox.prototype.fetchPage = function (cursor) {
    var query = "?limit=" + encodeURIComponent(this.pageSize);
    if (cursor) query += "&cursor=" + encodeURIComponent(cursor);
    return this.request("GET", "/messages" + query);
  };

  /**
   * A change to the inbox (read, archive, a push) is counted when it starts and
   * when it ends: a list answer that overlapped one may predate it, so instead of
   * putting an old unread count back on the badge, the page is fetched again.
   */
  Inbox.prototype.changing = function (promise) {
    var self = this;
    this.changes += 1;
    return promise.then(
      function (value) {
        self.changes += 1;
        return value;
      },
      function (error) {
        self.changes += 1;
        throw error;
      }
    );
  };

  Inbox.prototype.loadPage = function (cursor, apply) {
    var self = this;
    var changes = this.changes;
    var stale = false;
    this.loading = true;
    this.update();
    return this.fetchPage(cursor)
      .then(function (page) {
        if (self.changes !== changes) {
          stale = true;
          return;
        }
        self.clearError();
        apply(page);
        self.unreadCount = page.unread_count;
      })
      .catch(this.fail.bind(this))
      .then(function () {
        self.loading = false;
        if (self.destroyed) return;
        if (stale) return self.loadPage(cursor, apply);
        self.update();
      });
  };

  /** Newest first; on a reconnect it also brings in what was pushed while the socket was down. */
  Inbox.prototype.loadFirstPage = function () {
    var self = this;
    return this.loadPage(null, function (page) {
      var fresh = {};
      page.items.forEach(function (item) {
        fresh[item.id] = item;
      });
      // Rows already shown take the page's state (read in another tab, say).
      var kept = self.items.filter(function (item) {
        return !fresh[item.id];
      });
      if (!self.firstPageLoaded) self.nextCursor = page.next_cursor;
      self.firstPageLoaded = true;
      self.items = page.items.concat(kept).sort(function (a, b) {
        return Date.parse(b.created_at) - Date.parse(a.created_at);
      });
    });
  };

  Inbox.prototype.loadMore = function () {
    if (!this.nextCursor || this.loading) return Promise.resolve();
    var self = this;
    return this.loadPage(this.nextCursor, function (page) {
      var known = self.index();
      self.items = self.items.concat(
        page.items.filter(function (item) {
          return !known[item.id];
        })
      );
      self.nextCursor = page.next_cursor;
    });
  };

  Inbox.prototype.index = function () {
    var known = {};
    this.items.forEach(function (item) {
      known[item.id] = item;
    });
    return known;
  };

  Inbox.prototype.replace = function (updated) {
    this.items = this.items.map(function (item) {
      return item.id === updated.id ? updated : item;
    });
  };

  Inbox.prototype.post = function (path) {
    return this.changing(this.request("POST", path));
  };

  Inbox.prototype.markRead = function (item) {
    var current = this.index()[item.id] || item;
    if (current.read_at) return Promise.resolve(current);
    var self = this;
    return this.post("/messages/" + encodeURIComponent(item.id) + "/read").then(function (updated) {
      var shown = self.index()[item.id];
      if (shown && !shown.read_at) self.unreadCount = Math.max(0, self.unreadCount - 1);
      self.replace(updated);
      self.update();
      return updated;
    });
  };

  /** A click: the message is read, then its link (if any, and only http/https) is followed. */
  Inbox.prototype.open = function (item) {
    var self = this;
    var url = safeUrl(item.action_url);
    this.host.dispatchEvent(new CustomEvent("herald:click", { detail: { item: item, url: url } }));
    return this.markRead(item)
      .catch(this.fail.bind(this))
      .then(function () {
        if (!url || self.destroyed) return;
        if (self.target === "_self") {
          global.location.assign(url);
        } else {
          global.open(url, self.target, "noopener,noreferrer");
        }
      });
  };

  Inbox.prototype.archive = function (item) {
    var self = this;
    return this.post("/messages/" + encodeURIComponent(item.id) + "/archive")
      .then(function () {
        var shown = self.index()[item.id];
        if (shown && !shown.read_at) self.unreadCount = Math.max(0, self.unreadCount - 1);
        self.items = self.items.filter(function (other) {
          return other.id !== item.id;
        });
        self.update();
      })
      .catch(this.fail.bind(this));
  };

  Inbox.prototype.markAllRead = function () {
    var self = this;
    this.readAllButton.disabled = true;
    return this.post("/messages/read-all")
      .then(function () {
        var now = new Date().toISOString();
        self.items = self.items.map(function (item) {
          return item.read_at ? item : Object.assign({}, item, { read_at: now });
        });
        self.unreadCount = 0;
        self.update();
      })
      .catch(function (error) {
        self.update();
        self.fail(error);
      });
  };

  // --- WebSocket -----------------------------------------------------------------

  Inbox.prototype.connect = function () {
    if (this.destroyed) return;
    var self = this;
    var query =
      "?tenant=" +
      encodeURIComponent(this.tenant) +
      "&subscriber=" +
      encodeURIComponent(this.subscriberId) +
      "&hash=" +
      encodeURIComponent(this.subscriberHash);
    var socket;
    try {
      socket = new WebSocket(this.socketUrl + query);
    } catch (error) {
      this.fail(error);
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", function () {
      self.reconnectDelay = RECONNECT_MIN_MS;
      if (self.connectedOnce) self.loadFirstPage(); // catch up on what the outage missed
      self.connectedOnce = true;
      self.host.dispatchEvent(new CustomEvent("herald:connected"));
    });
    socket.addEventListener("message", function (event) {
      var data;
      try {
        data = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (data.type === "message" && data.item) {
        self.receive(data.item, data.unread_count);
      } else if (data.type === "error" && data.problem) {
        self.fail(self.problem(data.problem.status, data.problem));
      }
    });
    socket.addEventListener("close", function (event) {
      if (self.socket === socket) self.socket = null;
      if (self.destroyed) return;
      if (event.code === CLOSE_UNAUTHORIZED || event.code === CLOSE_FORBIDDEN) return;
      self.scheduleReconnect();
    });
  };

  Inbox.prototype.scheduleReconnect = function () {
    var self = this;
    // Jittered, so that every open inbox does not come back at the same instant
    // after a server restart.
    var delay = Math.round(this.reconnectDelay / 2 + (Math.random() * this.reconnectDelay) / 2);
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, RECONNECT_MAX_MS);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(function () {
      self.connect();
    }, delay);
  };

  Inbox.prototype.receive = function (item, unreadCount) {
    this.changes += 1;
    if (!this.index()[item.id]) this.items.unshift(item);
    else this.replace(item);
    if (typeof unreadCount === "number") this.unreadCount = unreadCount;
    this.update();
    this.host.dispatchEvent(new CustomEvent("herald:message", { detail: { item: item } }));
  };

  Inbox.prototype.destroy = function () {
    this.destroyed = true;
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close(1000);
    document.removeEventListener("click", this.onDocumentClick, true);
    document.removeEventListener("keydown", this.onKeyDown);
    while (this.root.firstChild) this.root.removeChild(this.root.firstChild);
  };

  function controller(inbox) {
    return {
      refresh: function () {
        return inbox.loadFirstPage();
      },
      markAllRead: function () {
        return inbox.markAllRead();
      },
      open: function () {
        inbox.toggle(true);
      },
      close: function () {
        inbox.toggle(false);
      },
      get unreadCount() {
        return inbox.unreadCount;
      },
      destroy: function () {
        inbox.destroy();
      },
    };
  }

  /**
   * Render the inbox into ``element`` (in its shadow root) and keep it live.
   * Options: baseUrl, tenant, subscriberId, subscriberHash (required); socketUrl
   * (default: baseUrl's /ws/inbox), pageSize (20), locale, target ("_self", or
   * "_blank" to open links in a new tab), labels. Returns a controller with
   * refresh(), markAllRead(), open(), close(), unreadCount and destroy().
   * The element fires herald:message, herald:click, herald:connected and herald:error.
   */
  function mount(element, options) {
    if (!element || typeof element.attachShadow !== "function") {
      throw new Error("HeraldInbox.mount: the first argument must be an element.");
    }
    if (element.heraldInbox) element.heraldInbox.destroy();
    var handle = controller(new Inbox(element, options || {}));
    element.heraldInbox = handle;
    return handle;
  }

  global.HeraldInbox = { mount: mount, version: "1" };

  if (global.customElements && !global.customElements.get("herald-inbox")) {
    global.customElements.define(
      "herald-inbox",
      class extends HTMLElement {
        connectedCallback() {
          mount(this, {
            baseUrl: this.getAttribute("base-url"),
            tenant: this.getAttribute("tenant"),
            subscriberId: this.getAttribute("subscriber-id"),
            subscriberHash: this.getAttribute("subscriber-hash"),
            socketUrl: this.getAttribute("socket-url") || undefined,
            target: this.getAttribute("target") || undefined,
          });
        }

        disconnectedCallback() {
          if (this.heraldInbox) this.heraldInbox.destroy();
          this.heraldInbox = null;
        }
      }
    );
  }
})(window);
