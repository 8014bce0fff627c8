// A browser client for chat protocol v1.2 over WebSocket. Plain JavaScript, no build step.
//
// Every text from the server goes into the page with textContent, never innerHTML:
// names and messages are other people's input.
//
// A login's session token is kept in localStorage (with the server's address and the
// open conversation), so a reload signs in again by itself; "Log out" revokes it on the
// server and forgets it here. A conversation shows its last HISTORY_PAGE messages when
// opened, and older pages as one scrolls up. A lost connection is retried with growing
// pauses; once back, each conversation fetches what it missed (history `after` its
// newest message).
//
// Devices (protocol 1.2): the browser is one device of its user, named by a random id
// kept in localStorage (DEVICE_KEY), so a reload is the same device and its token, which
// belongs to that device, still works. Logins ask for `acks`: the server keeps each
// message for this device until the page acknowledges it, and the page does so once it
// has rendered it, one `ack` for a burst (see Connection.shown). What the user sends from
// another device arrives as a copy and shows as the user's own; a group joined there is
// added to the list (`group_joined`); "Log out everywhere" there ends this session too
// (`logged_out`), and the page goes back to the sign-in form and says why.
//
// Conversations (protocol 1.2): at sign-in the page asks for `conversations` and takes
// each one's unread count from the server (so a badge shows what arrived while every
// device was away, and what another device already read does not count); badges then
// count live. What the open conversation shows is marked read (`read`, the newest
// message shown), and the page's other devices and the sender learn of it; a `read`
// event from another of one's devices clears a badge. One's own messages in a
// one-to-one conversation say "Sent ✓" or "Read ✓✓" (the other person's marker, from
// `conversations` and their receipts). Typing in the box tells a friend (`typing`, at
// most every TYPING_EVERY_MS while typing, `active: false` once one stops or sends), and
// "bob is typing…" shows under the conversation while bob types.
"use strict";

(function () {
  // Friends' presence comes live (protocol 1.1 presence events). The lists are read
  // again now and then all the same: people who are not friends (someone who wrote to
  // you) get no events, and an event can be lost while a server is in trouble.
  const PRESENCE_REFRESH_MS = 60000;
  const MAX_TEXT = 4096;
  const MEMBERS_SHOWN = 12; // a group's detail line names this many members, then counts
  const HISTORY_PAGE = 50; // messages shown on opening a conversation, and per older page
  const CATCH_UP_PAGE = 200; // the most one `history` request may ask for
  const SESSION_KEY = "chat.session"; // localStorage: {url, name, token, device, current}
  const DEVICE_KEY = "chat.device"; // localStorage: this browser's device id, "web-" + 8 hex
  const RECONNECT_FIRST_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const OLDER_WHEN_PX = 48; // scrolled this close to the top: load the older page
  const CONVERSATIONS_PAGE = 100; // conversations read at sign-in, newest activity first
  const TYPING_EVERY_MS = 3000; // the protocol's pace for `typing` with `active: true`
  const TYPING_IDLE_MS = 4000; // no key for this long: `active: false`
  const TYPING_SHOWN_MS = 6000; // "… is typing" goes away without a newer `typing`

  const $ = (id) => document.getElementById(id);

  // --- the connection ------------------------------------------------------------

  /** One WebSocket; requests get promises of their replies (matched by rid). */
  class Connection {
    constructor(url, handlers) {
      this.url = url;
      this.handlers = handlers; // { event(obj, conn), orphanError(obj), closed(code, reason) }
      this.nextRid = 1;
      this.pending = new Map();
      this.ws = null;
      this.shownSeq = 0; // the highest `seq` rendered (an acks login numbers events from 1)
      this.ackedSeq = 0; // the highest one the server was told of
      this.acking = null; // the ack in flight, or a timer about to send one
    }

    /** An event with `seq` was rendered: acknowledge it with whatever else comes in the
     * same burst. One ack at a time: what is rendered while one is on its way goes in the
     * next, so a burst of events costs one or two acks, never one each. */
    shown(seq) {
      if (typeof seq !== "number" || seq <= this.shownSeq) return;
      this.shownSeq = seq;
      if (this.acking === null) this.acking = this._ackShown(true);
    }

    /** Acknowledge everything rendered so far; resolves once the server has it. */
    async flushAcks() {
      while (this.acking !== null) await this.acking;
      if (this.shownSeq > this.ackedSeq) {
        this.acking = this._ackShown(false);
        await this.acking;
      }
    }

    async _ackShown(afterBurst) {
      try {
        // Never finish synchronously: `acking` is set to this call's promise first.
        await (afterBurst ? new Promise((resolve) => window.setTimeout(resolve, 0)) : null);
        while (this.shownSeq > this.ackedSeq) {
          const seq = this.shownSeq;
          const reply = await this.request("ack", { seq: seq });
          if (reply.type === "error") {
            console.error("ack refused", reply);
            return;
          }
          this.ackedSeq = seq;
        }
      } catch (err) {
        // closed: what was not acknowledged comes again at the next login
      } finally {
        this.acking = null;
      }
    }

    open() {
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(this.url);
        } catch (err) {
          reject(new Error("not a WebSocket address: " + this.url));
          return;
        }
        this.ws = ws;
        let opened = false;
        ws.addEventListener("open", () => {
          opened = true;
          resolve();
        });
        ws.addEventListener("message", (e) => this._onMessage(e.data));
        ws.addEventListener("close", (e) => {
          for (const { reject: fail } of this.pending.values()) {
            fail(new Error("the connection closed"));
          }
          this.pending.clear();
          if (!opened) {
            reject(new Error("cannot connect to " + this.url));
          } else {
            this.handlers.closed(e.code, e.reason);
          }
        });
      });
    }

    /** Send a request; resolves with the reply, `ok` or `error`. */
    request(type, fields) {
      const rid = this.nextRid++;
      const message = Object.assign({ type: type, rid: rid }, fields || {});
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject(new Error("not connected"));
          return;
        }
        this.pending.set(rid, { resolve: resolve, reject: reject });
        this.ws.send(JSON.stringify(message));
      });
    }

    /** Like request, but an `error` reply rejects with a ServerError. */
    async call(type, fields) {
      const reply = await this.request(type, fields);
      if (reply.type === "error") {
        throw new ServerError(reply.code, reply.message);
      }
      return reply;
    }

    close() {
      if (this.ws) {
        this.ws.close(1000);
      }
    }

    _onMessage(data) {
      let obj;
      try {
        obj = JSON.parse(data);
      } catch (err) {
        console.error("not JSON from the server", data);
        return;
      }
      if (obj.type === "ok" || obj.type === "error") {
        const waiting = "rid" in obj ? this.pending.get(obj.rid) : undefined;
        if (waiting) {
          this.pending.delete(obj.rid);
          waiting.resolve(obj);
        } else {
          this.handlers.orphanError(obj);
        }
        return;
      }
      this.handlers.event(obj, this);
    }
  }

  class ServerError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // --- state -------------------------------------------------------------------------

  const state = {
    conn: null,
    me: null, // {id, name}
    people: new Map(), // user id -> {id, name, online, friend}
    requests: new Map(), // user id -> {id, name}: friend requests waiting for an answer
    groups: new Map(), // group id -> {id, name, description, role, members}
    conversations: new Map(), // "u:ID" | "g:ID" -> {key, kind, id, messages, unread}
    current: null,
    presenceTimer: null,
    loggingOut: false,
    reconnectTimer: null,
    reconnectAttempts: 0,
  };

  function conversation(kind, id) {
    const key = kind + ":" + id;
    let conv = state.conversations.get(key);
    if (!conv) {
      // loaded: its latest page was fetched; hasOlder: the server has older messages.
      // readSent: the newest id marked read; peerRead: the other person's marker.
      conv = {
        key: key, kind: kind, id: id, messages: [], unread: 0,
        loaded: false, loading: false, hasOlder: false, loadingOlder: false,
        readSent: 0, peerRead: 0, typingTimer: null, typing: false,
      };
      state.conversations.set(key, conv);
    }
    return conv;
  }

  // --- the remembered session (localStorage) ------------------------------------------

  function savedSession() {
    try {
      const saved = JSON.parse(window.localStorage.getItem(SESSION_KEY) || "null");
      if (saved && typeof saved.url === "string" && typeof saved.token === "string") {
        return saved;
      }
    } catch (err) {
      // storage disabled or garbled: nothing remembered
    }
    return null;
  }

  function saveSession(fields) {
    try {
      const saved = Object.assign(savedSession() || {}, fields);
      window.localStorage.setItem(SESSION_KEY, JSON.stringify(saved));
    } catch (err) {
      // storage disabled: a reload asks for the password again
    }
  }

  function forgetSession() {
    try {
      window.localStorage.removeItem(SESSION_KEY);
    } catch (err) {
      // nothing to forget
    }
  }

  /** This browser's device id: made once, kept across reloads. Without storage it lasts
   * as long as the page (and a reload is a new device). */
  let deviceFallback = null;
  function deviceId() {
    try {
      const kept = window.localStorage.getItem(DEVICE_KEY);
      if (kept && kept.length <= 64) return kept;
      const made = "web-" + randomHex(4);
      window.localStorage.setItem(DEVICE_KEY, made);
      return made;
    } catch (err) {
      if (deviceFallback === null) deviceFallback = "web-" + randomHex(4);
      return deviceFallback;
    }
  }

  function randomHex(bytes) {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    const values = new Uint8Array(bytes);
    crypto.getRandomValues(values);
    return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function titleOf(conv) {
    if (conv.kind === "u") {
      const person = state.people.get(conv.id);
      return person ? person.name : "User " + conv.id;
    }
    const group = state.groups.get(conv.id);
    return group ? group.name : "Group " + conv.id;
  }

  function newCid() {
    return randomHex(16);
  }

  // --- small view helpers ------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function announce(text) {
    const announcer = $("announcer");
    announcer.textContent = "";
    // A fresh text node makes screen readers read the same words again.
    window.setTimeout(() => {
      announcer.textContent = text;
    }, 50);
  }

  function note(text, isError) {
    const box = $("sidebar-note");
    box.textContent = text;
    box.classList.toggle("error", Boolean(isError));
  }

  function formatTime(ts) {
    const date = new Date(ts);
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    return sameDay
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  }

  // --- rendering ----------------------------------------------------------------------

  function renderSidebar() {
    const friendList = $("friend-list");
    friendList.replaceChildren();
    const people = Array.from(state.people.values())
      .filter((p) => p.friend || state.conversations.has("u:" + p.id))
      .sort((a, b) => a.name.localeCompare(b.name));
    for (const person of people) {
      const item = sidebarItem("u", person.id, person.name, presenceLabel(person), person);
      if (person.friend) item.append(friendMenu(person));
      friendList.append(item);
    }
    $("no-friends").hidden = people.length > 0;

    const groupList = $("group-list");
    groupList.replaceChildren();
    const groups = Array.from(state.groups.values()).sort((a, b) => a.name.localeCompare(b.name));
    for (const group of groups) {
      groupList.append(sidebarItem("g", group.id, group.name, "#" + group.id, null));
    }
    $("no-groups").hidden = groups.length > 0;
  }

  /** A friend's menu: remove the friend, or block them. A disclosure button that opens a
   * small list of actions (Escape or a second click closes it). */
  function friendMenu(person) {
    const menu = el("div", "friend-menu");
    const toggle = el("button", "menu-button", "⋯");
    toggle.type = "button";
    toggle.setAttribute("aria-label", "Actions for " + person.name);
    toggle.title = "Actions for " + person.name;
    toggle.setAttribute("aria-expanded", "false");
    const actions = el("div", "menu-items");
    actions.id = "actions-" + person.id;
    actions.hidden = true;
    toggle.setAttribute("aria-controls", actions.id);
    const close = () => {
      actions.hidden = true;
      toggle.setAttribute("aria-expanded", "false");
    };
    toggle.addEventListener("click", () => {
      const opening = actions.hidden;
      actions.hidden = !opening;
      toggle.setAttribute("aria-expanded", String(opening));
    });
    menu.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        close();
        toggle.focus();
      }
    });
    const remove = el("button", "", "Remove friend");
    remove.type = "button";
    remove.addEventListener("click", guardedClick(() => removeFriend(person)));
    const block = el("button", "danger", "Block");
    block.type = "button";
    block.addEventListener("click", guardedClick(() => blockUser(person)));
    actions.append(remove, block);
    menu.append(toggle, actions);
    return menu;
  }

  function presenceLabel(person) {
    const presence = person.online ? "online" : "offline";
    return person.friend ? presence : presence + ", not a friend";
  }

  function sidebarItem(kind, id, name, detail, person) {
    const key = kind + ":" + id;
    const conv = state.conversations.get(key);
    const item = el("li");
    const button = el("button", "conv-button");
    button.type = "button";
    button.dataset.key = key;
    if (state.current === key) {
      button.setAttribute("aria-current", "true");
    }
    const marker = person ? (person.online ? "online" : "offline") : "none";
    const dot = el("span", "presence " + marker);
    dot.setAttribute("aria-hidden", "true"); // the detail text says it in words
    button.append(dot);
    button.append(el("span", "conv-name", name));
    button.append(el("span", "conv-detail", detail));
    if (conv && conv.unread > 0) {
      const badge = el("span", "badge", String(conv.unread));
      badge.setAttribute("aria-label", conv.unread + " unread");
      button.append(badge);
    }
    button.addEventListener("click", () => openConversation(key));
    item.append(button);
    return item;
  }

  /** Draw the open conversation. `anchor`: "bottom" scrolls to the newest message,
   * "older" keeps what was on screen in place while older messages appear above it;
   * otherwise the view stays where it was, or at the bottom if it was there. */
  function renderConversation(anchor) {
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    const wasAtBottom = fromBottom - list.clientHeight < OLDER_WHEN_PX;
    const top = list.scrollTop;
    list.replaceChildren();
    const conv = state.current ? state.conversations.get(state.current) : null;
    const text = $("composer-text");
    const send = $("send-button");
    if (!conv) {
      $("conversation-title").textContent = "No conversation open";
      $("conversation-detail").textContent = "Choose a friend or a group on the left.";
      text.disabled = true;
      send.disabled = true;
      return;
    }
    $("conversation-title").textContent = titleOf(conv);
    $("conversation-detail").textContent = conversationDetail(conv);
    text.disabled = false;
    send.disabled = false;
    if (conv.hasOlder || conv.loadingOlder) {
      const item = el("li", "older");
      const button = el("button", "older-button",
        conv.loadingOlder ? "Loading older messages…" : "Show older messages");
      button.type = "button";
      button.disabled = conv.loadingOlder;
      button.addEventListener("click", () => loadOlder(conv));
      item.append(button);
      list.append(item);
    } else if (conv.loaded) {
      list.append(el("li", "history-start help",
        conv.messages.length ? "The start of this conversation" : "No messages yet"));
    } else if (conv.loading) {
      list.append(el("li", "history-start help", "Loading messages…"));
    }
    for (const message of conv.messages) {
      list.append(messageItem(message, conv));
    }
    renderTyping();
    if (anchor === "older") {
      list.scrollTop = list.scrollHeight - fromBottom;
    } else if (anchor === "bottom" || wasAtBottom) {
      list.scrollTop = list.scrollHeight;
    } else {
      list.scrollTop = top;
    }
  }

  function conversationDetail(conv) {
    if (conv.kind === "u") {
      const person = state.people.get(conv.id);
      if (!person) return "";
      if (person.id === state.me.id) return "Notes to yourself";
      return presenceLabel(person);
    }
    const group = state.groups.get(conv.id);
    if (!group) return "";
    const parts = ["Group #" + group.id];
    if (group.description) parts.push(group.description);
    if (group.members && group.members.length) {
      const shown = group.members.slice(0, MEMBERS_SHOWN).map((m) => m.name).join(", ");
      const total = group.member_count || group.members.length;
      parts.push(total > MEMBERS_SHOWN ? shown + " and " + (total - MEMBERS_SHOWN) + " more" : shown);
    }
    return parts.join(" · ");
  }

  /** "bob is typing…" under the open conversation, while bob types. */
  function renderTyping() {
    const conv = state.current ? state.conversations.get(state.current) : null;
    const line = $("typing");
    line.textContent = conv && conv.typing ? titleOf(conv) + " is typing\u2026" : "";
  }

  function messageItem(message, conv) {
    const mine = message.from.id === state.me.id;
    const item = el("li", "message" + (mine ? " mine" : ""));
    if (message.messageId) item.dataset.messageId = String(message.messageId);
    const meta = el("p", "meta");
    meta.append(el("span", "from", mine ? "You" : message.from.name));
    if (message.ts) {
      const time = el("time", "time", formatTime(message.ts));
      time.dateTime = new Date(message.ts).toISOString();
      meta.append(" ", time);
    }
    if (message.offline) meta.append(" ", el("span", "tag", "received while you were away"));
    if (message.state === "sending") meta.append(" ", el("span", "tag", "sending…"));
    if (message.state === "failed") meta.append(" ", el("span", "tag error", "not sent"));
    if (mine && message.messageId && conv && conv.kind === "u" && conv.id !== state.me.id) {
      const read = message.messageId <= conv.peerRead;
      const receipt = el("span", "receipt" + (read ? " read" : ""),
        read ? "Read \u2713\u2713" : "Sent \u2713");
      meta.append(" ", receipt);
    }
    item.append(meta);
    item.append(el("p", "text", message.text)); // textContent: never markup
    if (message.error) item.append(el("p", "error", message.error));
    return item;
  }

  // --- incoming -----------------------------------------------------------------------

  function addMessage(conv, message) {
    if (message.messageId && conv.messages.some((m) => m.messageId === message.messageId)) {
      return false; // our own ok and its event (sending to oneself), or a repeat
    }
    conv.messages.push(message);
    if (state.current !== conv.key && message.from.id !== state.me.id) {
      conv.unread += 1;
    }
    return true;
  }

  /** Someone known by id only (the recipient of a copy of one's own message): named
   * once a message or a list shows the name. */
  function personById(id, name) {
    let known = state.people.get(id);
    if (!known) {
      known = { id: id, name: name || "User " + id, online: false, friend: false, named: !!name };
      state.people.set(id, known);
    } else if (name && known.named === false) {
      known.name = name;
      known.named = true;
    }
    return known;
  }

  function onEvent(event, conn) {
    if (!state.me) return; // signed out already (logged_out, then the close)
    onLoggedInEvent(event);
    if (event.type === "message" || event.type === "group_message") {
      conn.shown(event.seq); // rendered: acknowledged with the rest of its burst
    }
  }

  function onLoggedInEvent(event) {
    if (event.type === "message") {
      // One's own message, sent from another device (a copy), goes to its recipient's
      // conversation, and shows as one's own.
      const own = event.from.id === state.me.id;
      const other = own ? event.to : event.from.id;
      if (own) {
        personById(other, null); // the recipient, maybe known by id only
      } else if (!state.people.has(event.from.id)) {
        state.people.set(event.from.id, {
          id: event.from.id, name: event.from.name, online: true, friend: false,
        });
      } else {
        const sender = personById(event.from.id, event.from.name); // names one known by id
        if (!event.offline) sender.online = true; // they just wrote
      }
      const conv = conversation("u", other);
      if (!own && conv.typing) showTyping(conv, false); // they sent what they typed
      const added = addMessage(conv, {
        messageId: event.message_id, from: event.from, text: event.text,
        ts: event.ts, offline: event.offline,
      });
      if (added && state.current !== conv.key && !event.offline && !own) {
        announce("New message from " + event.from.name);
      }
      refresh(conv);
    } else if (event.type === "group_message") {
      if (!state.groups.has(event.group_id)) {
        state.groups.set(event.group_id, {
          id: event.group_id, name: "Group " + event.group_id, description: "",
          role: "normal", members: [],
        });
      }
      const conv = conversation("g", event.group_id);
      const added = addMessage(conv, {
        messageId: event.message_id, from: event.from, text: event.text,
        ts: event.ts, offline: event.offline,
      });
      if (added && state.current !== conv.key && !event.offline &&
          event.from.id !== state.me.id) {
        announce("New message in " + titleOf(conv) + " from " + event.from.name);
      }
      refresh(conv);
    } else if (event.type === "friend_removed") {
      const person = state.people.get(event.friend.id);
      if (person) person.friend = false;
      note(event.friend.name + " ended your friendship.");
      announce(event.friend.name + " ended your friendship");
      renderSidebar();
      if (state.current) renderConversation();
    } else if (event.type === "presence") {
      // A friend came or went; the newest event is the current state.
      const person = state.people.get(event.user.id);
      if (person) {
        person.online = event.online;
        person.friend = true;
      } else {
        state.people.set(event.user.id, {
          id: event.user.id, name: event.user.name, online: event.online, friend: true,
        });
      }
      renderSidebar();
      if (state.current === "u:" + event.user.id) renderConversation();
    } else if (event.type === "friend_added") {
      const friend = event.friend;
      state.people.set(friend.id, {
        id: friend.id, name: friend.name, online: friend.online, friend: true,
      });
      note(friend.name + " added you as a friend.");
      announce(friend.name + " added you as a friend");
      renderSidebar();
    } else if (event.type === "friend_request") {
      state.requests.set(event.from.id, event.from);
      note(event.from.name + " asks to be your friend.");
      announce(event.from.name + " asks to be your friend");
      renderRequests();
    } else if (event.type === "group_joined") {
      // Joined or created on another of this user's devices: its messages come here too.
      const known = state.groups.get(event.group.id);
      state.groups.set(event.group.id, Object.assign({ members: [] }, known || {},
        event.group, { role: event.role }));
      note("You joined " + event.group.name + " on another device.");
      renderSidebar();
      if (state.current === "g:" + event.group.id) renderConversation();
    } else if (event.type === "logged_out") {
      signedOutElsewhere(event.reason);
    } else if (event.type === "read") {
      onRead(event);
    } else if (event.type === "typing") {
      onTyping(event);
    }
  }

  /** Another device of this user logged out everywhere: this session is over, and its
   * token revoked. The server closes the connection; that close is no news. */
  function signedOutElsewhere(reason) {
    const conn = state.conn;
    forgetSession();
    resetSession();
    showLogin();
    setStatus("Not connected");
    $("login-error").textContent = reason === "everywhere"
      ? "You were signed out: \u201cLog out everywhere\u201d was used on another device."
      : "You were signed out (" + reason + ").";
    if (conn) {
      conn.handlers.closed = () => {};
      conn.close();
    }
  }

  function refresh(conv) {
    renderSidebar();
    if (state.current === conv.key) {
      renderConversation();
      markRead(conv);
    }
  }

  /** The open conversation is on screen: mark read up to its newest message (the
   * server ignores a marker that would go back; a hidden page marks nothing). */
  function markRead(conv) {
    if (!state.conn || state.current !== conv.key || document.visibilityState === "hidden") {
      return;
    }
    let newest = 0;
    for (const m of conv.messages) {
      if (m.messageId && m.messageId > newest) newest = m.messageId;
    }
    if (newest <= conv.readSent) return;
    conv.readSent = newest;
    state.conn.request("read", Object.assign(where(conv), { message_id: newest }))
      .catch(() => {}); // closed: the next sign-in reads the markers again
  }

  /** Unread counts and markers from the server (`conversations`), at sign-in. */
  async function loadConversations() {
    const reply = await state.conn.call("conversations", { limit: CONVERSATIONS_PAGE });
    for (const item of reply.conversations) {
      let conv;
      if (item.with) {
        personById(item.with.id, item.with.name);
        conv = conversation("u", item.with.id);
        conv.peerRead = Math.max(conv.peerRead, item.peer_read || 0);
      } else {
        if (!state.groups.has(item.group.id)) {
          state.groups.set(item.group.id, {
            id: item.group.id, name: item.group.name, description: "", role: "normal",
            members: [],
          });
        }
        conv = conversation("g", item.group.id);
      }
      conv.readSent = Math.max(conv.readSent, item.read);
      conv.unread = state.current === conv.key ? 0 : item.unread;
    }
    renderSidebar();
    if (state.current) renderConversation();
  }

  /** A `read` event: another of one's devices read a conversation (its badge goes), or
   * the other person read one's messages (a receipt). */
  function onRead(event) {
    if (event.by) {
      const conv = conversation("u", event.by.id);
      if (event.message_id > conv.peerRead) {
        conv.peerRead = event.message_id;
        if (state.current === conv.key) renderConversation();
      }
      return;
    }
    const conv = event.group_id !== undefined
      ? conversation("g", event.group_id) : conversation("u", event.with);
    conv.readSent = Math.max(conv.readSent, event.message_id);
    conv.unread = conv.messages.filter((m) => m.messageId && m.messageId > conv.readSent &&
      m.from.id !== state.me.id).length;
    renderSidebar();
  }

  /** A friend is typing to us, or stopped. */
  function onTyping(event) {
    const conv = conversation("u", event.from.id);
    personById(event.from.id, event.from.name);
    showTyping(conv, event.active);
  }

  function showTyping(conv, active) {
    if (conv.typingTimer !== null) window.clearTimeout(conv.typingTimer);
    conv.typingTimer = null;
    conv.typing = active;
    if (active) {
      conv.typingTimer = window.setTimeout(() => showTyping(conv, false), TYPING_SHOWN_MS);
    }
    if (state.current === conv.key) renderTyping();
  }

  // Our own typing: `active: true` at most every TYPING_EVERY_MS while keys come,
  // `active: false` after TYPING_IDLE_MS without one, or when the message is sent.
  const typingOut = { key: null, sentAt: 0, idleTimer: null };

  function typed() {
    const conv = state.current ? state.conversations.get(state.current) : null;
    if (!conv || conv.kind !== "u" || conv.id === state.me.id || !state.conn) return;
    if (typingOut.key !== null && typingOut.key !== conv.key) stoppedTyping();
    const now = Date.now();
    if (typingOut.key !== conv.key || now - typingOut.sentAt >= TYPING_EVERY_MS) {
      typingOut.key = conv.key;
      typingOut.sentAt = now;
      state.conn.request("typing", { with: conv.id, active: true }).catch(() => {});
    }
    if (typingOut.idleTimer !== null) window.clearTimeout(typingOut.idleTimer);
    typingOut.idleTimer = window.setTimeout(stoppedTyping, TYPING_IDLE_MS);
  }

  function stoppedTyping() {
    if (typingOut.idleTimer !== null) window.clearTimeout(typingOut.idleTimer);
    typingOut.idleTimer = null;
    if (typingOut.key === null) return;
    const id = Number(typingOut.key.slice(2));
    typingOut.key = null;
    typingOut.sentAt = 0;
    if (state.conn) state.conn.request("typing", { with: id, active: false }).catch(() => {});
  }

  function onOrphanError(reply) {
    // An error without rid: the server could not read one of our frames.
    note("The server refused a message: " + reply.message, true);
  }

  function onClosed(code, reason) {
    const wasLoggedIn = state.me !== null;
    const expected = state.loggingOut;
    if (!expected && wasLoggedIn && savedSession()) {
      // Keep what is on screen; sign in again with the token once the server answers.
      stopPresence();
      state.conn = null;
      scheduleReconnect();
      return;
    }
    resetSession();
    showLogin();
    setStatus("Not connected");
    if (!expected) {
      const why = reason ? ": " + reason : code ? " (code " + code + ")" : "";
      $("login-error").textContent =
        (wasLoggedIn ? "The connection was lost" : "The connection closed") + why +
        ". Sign in again to reconnect.";
    }
  }

  // --- requests from the page -------------------------------------------------------

  async function connect(url) {
    const conn = new Connection(url, {
      event: onEvent, orphanError: onOrphanError, closed: onClosed,
    });
    setStatus("Connecting to " + url + "…");
    await conn.open();
    setStatus("Connected to " + url);
    return conn;
  }

  async function signIn(register) {
    const url = $("server-url").value.trim();
    const name = $("login-name").value;
    const password = $("login-password").value;
    const error = $("login-error");
    error.textContent = "";
    if (!url || !name || !password) {
      error.textContent = "Server, name and password are all needed.";
      return;
    }
    setBusy(true);
    let conn = null;
    try {
      conn = await connect(url);
      state.conn = conn;
      if (register) {
        await conn.call("register", { name: name, password: password });
      }
      const device = deviceId();
      const reply = await conn.call("login", {
        name: name, password: password, device: device, acks: true,
      });
      saveSession({
        url: url, name: reply.user.name, token: reply.token, device: device, current: null,
      });
      startSession(reply);
      $("login-password").value = "";
      if (reply.offline > 0) {
        const count = reply.offline;
        note(count + (count === 1 ? " message" : " messages") + " arrived while you were away.");
      }
    } catch (err) {
      error.textContent = describeError(err);
      state.conn = null;
      if (conn) {
        state.loggingOut = true; // a failed sign-in: no "connection lost" message
        conn.close();
      }
    } finally {
      setBusy(false);
    }
  }

  function describeError(err) {
    if (err instanceof ServerError) {
      const known = {
        bad_credentials: "Wrong name or password.",
        name_taken: "That name is taken; choose another or log in.",
        already_online: "This browser is signed in to that account already (in another " +
          "tab or window?), or the account is signed in on 10 devices.",
        blocked: "Refused: one of you has blocked the other.",
        rate_limited: "Too many of these for now; try again later.",
        no_such_request: "That request is no longer waiting.",
      };
      return known[err.code] || err.message;
    }
    return err.message || String(err);
  }

  function setBusy(busy) {
    $("login-button").disabled = busy;
    $("register-button").disabled = busy;
  }

  /** A login's reply: show the chat. `resumed`: the same user came back after a lost
   * connection, so the conversations on screen stay (and fetch what they missed). */
  function startSession(reply, resumed) {
    state.loggingOut = false;
    state.me = reply.user;
    state.people.clear();
    state.groups.clear();
    state.requests.clear();
    if (!resumed) {
      state.conversations.clear();
      state.current = null;
    }
    for (const friend of reply.friends) {
      state.people.set(friend.id, {
        id: friend.id, name: friend.name, online: friend.online, friend: true,
      });
    }
    if (!state.people.has(state.me.id)) {
      state.people.set(state.me.id, {
        id: state.me.id, name: state.me.name, online: true, friend: false,
      });
    }
    for (const group of reply.groups) {
      state.groups.set(group.id, group);
    }
    $("me-name").textContent = state.me.name;
    $("account").hidden = false;
    $("login-view").hidden = true;
    $("chat-view").hidden = false;
    setStatus("Connected to " + state.conn.url);
    note("");
    renderSidebar();
    renderConversation("bottom");
    state.presenceTimer = window.setInterval(refreshPresence, PRESENCE_REFRESH_MS);
    if (!resumed) $("friend-name").focus();
    if (reply.friends_more || reply.groups_more) {
      pageInTheRest(reply).catch((err) => note(describeError(err), true));
    }
    if (!resumed) {
      // (After a lost connection, each conversation counts what it fetches instead.)
      loadConversations().catch((err) => note("Could not read your conversations: " +
        describeError(err), true));
    }
    loadRequests().catch((err) => note(describeError(err), true));
  }

  /** The friend-request setting and the requests waiting (protocol 1.2); events keep
   * the list live afterwards. */
  async function loadRequests() {
    const conn = state.conn;
    const settings = (await conn.call("settings", {})).settings;
    const waiting = await allPages(conn, "friend_requests", "requests", {});
    if (conn !== state.conn) return; // signed out meanwhile
    $("approve-friends").checked = settings.friend_requests === "approve";
    for (const user of waiting) state.requests.set(user.id, user);
    renderRequests();
  }

  function renderRequests() {
    const list = $("request-list");
    list.replaceChildren();
    const waiting = Array.from(state.requests.values())
      .sort((a, b) => a.name.localeCompare(b.name));
    for (const user of waiting) {
      const item = el("li", "request");
      item.append(el("span", "name", user.name));
      const accept = el("button", "", "Accept");
      accept.type = "button";
      accept.setAttribute("aria-label", "Accept " + user.name);
      accept.addEventListener("click", guardedClick(() => answerRequest(user, true)));
      const decline = el("button", "", "Decline");
      decline.type = "button";
      decline.setAttribute("aria-label", "Decline " + user.name);
      decline.addEventListener("click", guardedClick(() => answerRequest(user, false)));
      item.append(accept, decline);
      list.append(item);
    }
    $("requests-section").hidden = waiting.length === 0;
  }

  async function answerRequest(user, accepted) {
    try {
      if (accepted) {
        const friend = (await state.conn.call("accept_friend", { user_id: user.id })).friend;
        state.people.set(friend.id, {
          id: friend.id, name: friend.name, online: friend.online, friend: true,
        });
        note(friend.name + " is now your friend.");
      } else {
        await state.conn.call("decline_friend", { user_id: user.id });
        note("You declined " + user.name + "'s request.");
      }
    } finally {
      // Answered, or answered elsewhere already (no_such_request): no longer waiting.
      state.requests.delete(user.id);
      renderRequests();
      renderSidebar();
    }
  }

  function stopPresence() {
    if (state.presenceTimer !== null) {
      window.clearInterval(state.presenceTimer);
      state.presenceTimer = null;
    }
  }

  function resetSession() {
    stopPresence();
    cancelReconnect();
    state.conn = null;
    state.me = null;
    state.current = null;
    state.people.clear();
    state.groups.clear();
    state.requests.clear();
    state.conversations.clear();
    state.loggingOut = false;
  }

  function showLogin() {
    $("account").hidden = true;
    $("chat-view").hidden = true;
    $("login-view").hidden = false;
    $("login-name").focus();
  }

  async function refreshPresence() {
    const conn = state.conn;
    if (!conn) return;
    // Friends: the whole list a page at a time, with everyone's presence now.
    try {
      const friends = await allPages(conn, "friends", "friends", {});
      const listed = new Set(friends.map((f) => f.id));
      for (const person of state.people.values()) {
        if (person.friend && !listed.has(person.id)) person.friend = false;
      }
      for (const friend of friends) {
        state.people.set(friend.id, {
          id: friend.id, name: friend.name, online: friend.online, friend: true,
        });
      }
    } catch (err) {
      return; // disconnected or not logged in any more: the next round will tell
    }
    // Others with an open conversation, one by one (there are few).
    const people = Array.from(state.people.values())
      .filter((p) => p.id !== state.me.id && !p.friend && state.conversations.has("u:" + p.id));
    for (const person of people) {
      try {
        const reply = await conn.call("find_user", { name: person.name });
        person.online = reply.user.online;
      } catch (err) {
        return; // disconnected or not logged in any more: the next round will tell
      }
    }
    renderSidebar();
    if (state.current) renderConversation();
  }

  function openConversation(key, keepFocus) {
    const conv = state.conversations.get(key) ||
      conversation(key[0], Number(key.slice(2)));
    conv.unread = 0;
    state.current = key;
    if (conv.kind === "g" && state.groups.has(conv.id)) {
      loadMembers(state.groups.get(conv.id)).catch((err) => note(describeError(err), true));
    }
    saveSession({ current: key });
    renderSidebar();
    renderConversation("bottom");
    markRead(conv);
    if (!keepFocus) $("composer-text").focus();
    loadLatest(conv);
  }

  // --- history ----------------------------------------------------------------------

  function where(conv) {
    return conv.kind === "u" ? { with: conv.id } : { group_id: conv.id };
  }

  function fromHistory(item) {
    return {
      messageId: item.message_id, from: item.from, text: item.text, ts: item.ts, offline: false,
    };
  }

  function learnSenders(items) {
    for (const item of items) personById(item.from.id, item.from.name);
  }

  /** Add messages from history, each once, in id order (unsent ones stay last). */
  function merge(conv, messages) {
    const known = new Set(conv.messages.map((m) => m.messageId).filter(Boolean));
    const fresh = messages.filter((m) => !known.has(m.messageId));
    const order = (m) => (m.messageId ? m.messageId : Infinity);
    conv.messages = conv.messages.concat(fresh).sort((a, b) => order(a) - order(b));
    return fresh;
  }

  async function loadLatest(conv) {
    if (conv.loaded || conv.loading || !state.conn) return;
    conv.loading = true;
    try {
      const reply = await state.conn.call(
        "history", Object.assign(where(conv), { limit: HISTORY_PAGE }));
      learnSenders(reply.messages);
      merge(conv, reply.messages.map(fromHistory));
      conv.hasOlder = reply.more;
      conv.loaded = true;
    } catch (err) {
      note("Could not load the messages: " + describeError(err), true);
    } finally {
      conv.loading = false;
    }
    if (state.current === conv.key) {
      renderConversation("bottom");
      markRead(conv);
    }
  }

  async function loadOlder(conv) {
    if (!conv.hasOlder || conv.loadingOlder || !state.conn) return;
    const oldest = conv.messages.find((m) => m.messageId);
    if (!oldest) return;
    conv.loadingOlder = true;
    if (state.current === conv.key) renderConversation("older");
    try {
      const reply = await state.conn.call("history", Object.assign(where(conv), {
        before: oldest.messageId, limit: HISTORY_PAGE,
      }));
      learnSenders(reply.messages);
      merge(conv, reply.messages.map(fromHistory));
      conv.hasOlder = reply.more;
    } catch (err) {
      note("Could not load older messages: " + describeError(err), true);
    } finally {
      conv.loadingOlder = false;
    }
    if (state.current === conv.key) renderConversation("older");
  }

  /** After a reconnect: what each loaded conversation missed, newest last. */
  async function catchUp(conv) {
    if (!conv.loaded) return;
    let newest = 0;
    for (const m of conv.messages) {
      if (m.messageId && m.messageId > newest) newest = m.messageId;
    }
    if (newest === 0) {
      conv.loaded = false; // nothing to page from: load the latest page again
      await loadLatest(conv);
      return;
    }
    for (;;) {
      const reply = await state.conn.call("history", Object.assign(where(conv), {
        after: newest, limit: CATCH_UP_PAGE,
      }));
      const fresh = merge(conv, reply.messages.map(fromHistory));
      if (state.current !== conv.key) {
        conv.unread += fresh.filter((m) => m.from.id !== state.me.id).length;
      }
      if (!reply.more || reply.messages.length === 0) break;
      newest = reply.messages[reply.messages.length - 1].message_id;
    }
    refresh(conv);
  }

  // --- signing in again: after a reload, and after a lost connection -----------------

  /** Log in with the remembered token. Resolves true once signed in. */
  async function resumeSession(resumed) {
    const saved = savedSession();
    if (!saved) return false;
    let conn = null;
    try {
      conn = await connect(saved.url);
      state.conn = conn;
      // The token belongs to the device whose login got it: name that device again (a
      // session kept before devices had none: its token is the device "").
      const device = typeof saved.device === "string" ? saved.device : "";
      const login = { token: saved.token, acks: true };
      if (device) login.device = device;
      const reply = await conn.call("login", login);
      if (resumed && state.me && reply.user.id !== state.me.id) resumed = false;
      startSession(reply, resumed);
      state.reconnectAttempts = 0;
      if (resumed) {
        for (const conv of Array.from(state.conversations.values())) {
          catchUp(conv).catch((err) => note("Could not fetch missed messages: " +
            describeError(err), true));
        }
      } else if (saved.current) {
        openConversation(saved.current, true);
      }
      return true;
    } catch (err) {
      state.conn = null;
      if (conn) {
        conn.handlers.closed = () => {}; // this attempt's close is no news
        conn.close();
      }
      if (err instanceof ServerError && err.code === "bad_credentials") {
        forgetSession(); // expired or revoked: the password is needed again
        resetSession();
        showLogin();
        setStatus("Not connected");
        $("login-error").textContent = "Your session has ended; sign in again.";
        return false;
      }
      throw err;
    }
  }

  function scheduleReconnect() {
    if (state.reconnectTimer !== null) window.clearTimeout(state.reconnectTimer);
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** state.reconnectAttempts);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random())); // spread a crowd out
    state.reconnectAttempts += 1;
    setStatus("Connection lost; reconnecting in " + Math.ceil(delay / 1000) + " s…");
    state.reconnectTimer = window.setTimeout(async () => {
      state.reconnectTimer = null;
      try {
        await resumeSession(true);
      } catch (err) {
        // the server is not back yet, or the old login is still held: try again later
        scheduleReconnect();
      }
    }, delay);
  }

  /** Stop trying (signed out, or signed in again): the next loss starts at 1 s. */
  function cancelReconnect() {
    if (state.reconnectTimer !== null) {
      window.clearTimeout(state.reconnectTimer);
      state.reconnectTimer = null;
    }
    state.reconnectAttempts = 0;
  }

  async function sendCurrent() {
    const conv = state.current ? state.conversations.get(state.current) : null;
    const box = $("composer-text");
    const text = box.value;
    if (!conv || text.trim() === "") return;
    if (!state.conn) {
      note("Not connected: reconnecting. Your message stays in the box.", true);
      return;
    }
    if (Array.from(text).length > MAX_TEXT) {
      note("A message may have at most " + MAX_TEXT + " characters.", true);
      return;
    }
    box.value = "";
    stoppedTyping();
    const message = {
      messageId: null, from: state.me, text: text, ts: null, offline: false, state: "sending",
    };
    conv.messages.push(message);
    renderConversation();
    const cid = newCid();
    const request = conv.kind === "u"
      ? ["send", { to: conv.id, text: text, cid: cid }]
      : ["group_send", { group_id: conv.id, text: text, cid: cid }];
    try {
      const reply = await state.conn.call(request[0], request[1]);
      if (conv.messages.some((m) => m.messageId === reply.message_id)) {
        conv.messages.splice(conv.messages.indexOf(message), 1); // its event came first
      } else {
        message.messageId = reply.message_id;
        message.ts = reply.ts;
        message.state = "sent";
      }
    } catch (err) {
      message.state = "failed";
      message.error = describeError(err);
    }
    if (state.current === conv.key) renderConversation();
  }

  /** Every item of a paged list request, following ``after`` until ``more`` is false. */
  async function allPages(conn, type, key, fields) {
    const items = [];
    let request = Object.assign({}, fields);
    for (;;) {
      const reply = await conn.call(type, request);
      items.push(...reply[key]);
      if (!reply.more || reply[key].length === 0) return items;
      request = Object.assign({}, fields, { after: reply[key][reply[key].length - 1].id });
    }
  }

  /** The login reply was cut to fit a frame: read the rest of the friends and groups. */
  async function pageInTheRest(reply) {
    const conn = state.conn;
    if (reply.friends_more) {
      const last = reply.friends[reply.friends.length - 1];
      for (const friend of await allPages(conn, "friends", "friends", last ? { after: last.id } : {})) {
        state.people.set(friend.id, {
          id: friend.id, name: friend.name, online: friend.online, friend: true,
        });
      }
    }
    if (reply.groups_more) {
      const last = reply.groups[reply.groups.length - 1];
      for (const group of await allPages(conn, "groups", "groups", last ? { after: last.id } : {})) {
        state.groups.set(group.id, Object.assign({ members: [], members_more: true }, group));
      }
    }
    renderSidebar();
  }

  /** A group's full member list, read when its conversation opens and the login cut it. */
  async function loadMembers(group) {
    if (!group.members_more || group.loadingMembers) return;
    group.loadingMembers = true;
    try {
      group.members = await allPages(state.conn, "group_members", "members", { group_id: group.id });
      group.member_count = group.members.length;
      group.members_more = false;
    } finally {
      group.loadingMembers = false;
    }
    if (state.current === "g:" + group.id) renderConversation();
  }

  async function removeFriend(person) {
    await state.conn.call("remove_friend", { user_id: person.id });
    person.friend = false;
    renderSidebar();
    note(person.name + " is no longer your friend.");
  }

  async function blockUser(person) {
    const question = "Block " + person.name + "? They will no longer be able to message you " +
      "or add you as a friend, and your friendship ends. They are not told.";
    if (!window.confirm(question)) return;
    await state.conn.call("block", { user_id: person.id });
    person.friend = false;
    renderSidebar();
    note(person.name + " is blocked.");
  }

  async function addFriend(name) {
    const user = (await state.conn.call("find_user", { name: name })).user;
    const reply = await state.conn.call("add_friend", { user_id: user.id });
    const friend = reply.friend;
    if (reply.pending) {
      // They approve requests (protocol 1.2): asked, not friends until they accept.
      note("Asked " + friend.name + "; waiting for their answer.");
      return;
    }
    state.people.set(friend.id, {
      id: friend.id, name: friend.name, online: friend.online, friend: true,
    });
    renderSidebar();
    note(friend.name + " is now your friend.");
  }

  async function createGroup(name, description) {
    const reply = await state.conn.call("create_group", { name: name, description: description });
    const group = Object.assign({}, reply.group, {
      role: "creator", members: [{ id: state.me.id, name: state.me.name, role: "creator" }],
    });
    state.groups.set(group.id, group);
    note("Group " + group.name + " created: its number is " + group.id + ".");
    openConversation("g:" + group.id);
  }

  async function joinGroup(groupId) {
    const reply = await state.conn.call("join_group", { group_id: groupId });
    const group = Object.assign({}, reply.group, { role: reply.role, members: [] });
    state.groups.set(group.id, group);
    note("You joined " + group.name + ".");
    openConversation("g:" + group.id);
  }

  /** Run a click action; show its error next to the forms instead of throwing. */
  function guardedClick(action) {
    return async () => {
      if (!state.conn) return;
      try {
        await action();
      } catch (err) {
        note(describeError(err), true);
      }
    };
  }

  /** Run a sidebar action; show its error next to the forms instead of throwing. */
  function guarded(action) {
    return async (e) => {
      e.preventDefault();
      if (!state.conn) return;
      try {
        await action();
      } catch (err) {
        note(describeError(err), true);
      }
    };
  }

  // --- wiring ---------------------------------------------------------------------------

  function defaultServerUrl() {
    const given = new URLSearchParams(window.location.search).get("ws");
    if (given) return given;
    if (window.location.protocol === "https:") return "wss://" + window.location.host + "/ws";
    if (window.location.protocol === "http:") return "ws://" + window.location.host + "/ws";
    return "ws://127.0.0.1:6080";
  }

  function init() {
    $("server-url").value = defaultServerUrl();
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      signIn(false);
    });
    $("register-button").addEventListener("click", () => signIn(true));
    $("logout").addEventListener("click", () => logOut(false));
    $("logout-everywhere").addEventListener("click", () => {
      const question = "Log out here and on all your other devices? Each of them is " +
        "signed out at once and has to sign in again with the password.";
      if (window.confirm(question)) logOut(true);
    });
    window.addEventListener("pagehide", () => {
      // Leaving: tell the server what was rendered, so it does not come again.
      if (state.conn && state.me) state.conn.flushAcks();
    });
    $("messages").addEventListener("scroll", () => {
      const conv = state.current ? state.conversations.get(state.current) : null;
      if (conv && $("messages").scrollTop < OLDER_WHEN_PX) loadOlder(conv);
    });
    $("add-friend-form").addEventListener("submit", guarded(async () => {
      const input = $("friend-name");
      const name = input.value.trim();
      if (!name) return;
      await addFriend(name);
      input.value = "";
    }));
    $("approve-friends").addEventListener("change", async () => {
      const box = $("approve-friends");
      const wanted = box.checked ? "approve" : "anyone";
      if (!state.conn) return;
      try {
        const reply = await state.conn.call("settings", { friend_requests: wanted });
        box.checked = reply.settings.friend_requests === "approve";
        note(box.checked ? "Friend requests now wait for your answer."
          : "Anyone may add you as a friend now.");
      } catch (err) {
        box.checked = !box.checked;
        note(describeError(err), true);
      }
    });
    $("create-group-form").addEventListener("submit", guarded(async () => {
      const name = $("group-name").value.trim();
      if (!name) return;
      await createGroup(name, $("group-description").value.trim());
      $("group-name").value = "";
      $("group-description").value = "";
    }));
    $("join-group-form").addEventListener("submit", guarded(async () => {
      const value = $("group-id").value.trim();
      if (!/^[0-9]+$/.test(value)) {
        note("A group number is made of digits.", true);
        return;
      }
      await joinGroup(Number(value));
      $("group-id").value = "";
    }));
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      sendCurrent();
    });
    $("composer-text").addEventListener("input", () => {
      if ($("composer-text").value !== "") typed();
    });
    document.addEventListener("visibilitychange", () => {
      const conv = state.current ? state.conversations.get(state.current) : null;
      if (conv) markRead(conv);
    });
    $("composer-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendCurrent();
      }
    });
    showLogin();
    const saved = savedSession();
    if (saved) {
      $("server-url").value = saved.url;
      if (saved.name) $("login-name").value = saved.name;
      setStatus("Signing in again as " + (saved.name || "before") + "…");
      resumeAfterReload(0);
    }
  }

  /** "Log out" (and with `everywhere`, every other device too, each told at once). The
   * token is revoked on the server and forgotten here, after what was rendered is
   * acknowledged (else it would come again at the next sign-in). */
  async function logOut(everywhere) {
    const conn = state.conn;
    forgetSession();
    if (!conn) {
      resetSession(); // reconnecting: stop, and forget the token
      showLogin();
      setStatus("Not connected");
      return;
    }
    state.loggingOut = true;
    try {
      await conn.flushAcks();
      await conn.call("logout", { forget: true, everywhere: everywhere });
    } catch (err) {
      // closing anyway
    }
    conn.close();
  }

  /** A reload: the page before it may still be logged in for a moment (its connection
   * is closing), so `already_online` is tried again a few times. */
  function resumeAfterReload(attempt) {
    resumeSession(false).catch((err) => {
      if (err instanceof ServerError && err.code === "already_online" && attempt < 8) {
        window.setTimeout(() => resumeAfterReload(attempt + 1), 500 * (attempt + 1));
        return;
      }
      setStatus("Not connected");
      $("login-error").textContent = describeError(err) + " Sign in again, or reload to retry.";
    });
  }

  init();
})();
