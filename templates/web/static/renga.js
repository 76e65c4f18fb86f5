/* Renga's live pages: the event page follows the event's stream (Server-Sent Events) and
   updates the tallies, who answered what, the leading options and the comments in place; the
   "my events" page follows /u/stream and updates each event's row. Without JavaScript the
   pages are the same, with forms and reloads. No build step, no inline script (CSP: 'self'). */
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var reloading = false;

  function reload() {
    if (!reloading) { reloading = true; window.location.reload(); }
  }

  function setText(node, text) { if (node && node.textContent !== text) { node.textContent = text; } }

  function when(iso, zone) {
    // As the server writes times: "Sat 5 Dec 2026 19:00 CET", on the page's zone.
    try {
      var parts = {};
      new Intl.DateTimeFormat("en-GB", {
        timeZone: zone, weekday: "short", day: "numeric", month: "short",
        year: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
        timeZoneName: "short"
      }).formatToParts(new Date(iso)).forEach(function (part) { parts[part.type] = part.value; });
      return parts.weekday + " " + parts.day + " " + parts.month + " " + parts.year + " " +
        parts.hour + ":" + parts.minute + " " + parts.timeZoneName;
    } catch (error) { return iso; }
  }

  function follow(root, onData) {
    // The stream of `root` (data-stream), from the checkpoint the page was drawn at
    // (data-since), then from the last event seen: each change's data to `onData`; a `reset`
    // reloads. The server ends a stream saying why: shown; after "session" (revoked, expired,
    // no longer invited) a new stream would be refused, so it stops; else the browser
    // reconnects. A refused stream (a limit) is tried again later from where it was.
    var indicator = document.getElementById("live-indicator");
    var lastId = root.dataset.since || "";
    var source = null;

    function ended(message, which) {
      var data = {};
      try { data = JSON.parse(message.data); } catch (error) { data = {}; }
      if (indicator) { indicator.hidden = true; }
      var note = document.getElementById("live-ended");
      if (note && data.message) { note.textContent = data.message; note.hidden = false; }
      if (data.reason === "session") {
        which.close();
        if (source === which) { source = null; }
      }
    }

    function connect() {
      var url = root.dataset.stream + (lastId ? "?since=" + encodeURIComponent(lastId) : "");
      var which = new EventSource(url);
      source = which;
      which.addEventListener("hello", function () {
        if (indicator) { indicator.hidden = false; }
        var note = document.getElementById("live-ended");
        if (note) { note.hidden = true; }
      });
      which.addEventListener("change", function (message) {
        lastId = message.lastEventId || lastId;
        var data;
        try { data = JSON.parse(message.data); } catch (error) { return; }
        onData(data);
      });
      which.addEventListener("reset", reload);
      which.addEventListener("end", function (message) { ended(message, which); });
      which.onerror = function () {
        if (indicator) { indicator.hidden = true; }
        if (which.readyState === EventSource.CLOSED && source === which) {
          source = null;
          window.setTimeout(connect, 10000 + Math.random() * 20000);
        }
      };
    }

    connect();
  }

  /* The event page: the tallies, who answered what, the leading options, the comments. */
  function eventPage(article) {
    var announce = document.getElementById("live-updates");
    var viewer = article.dataset.viewer;

    function who(users) { return users.length ? users.join(", ") : "nobody"; }

    function labelOf(id) {
      var label = document.querySelector("#option-" + CSS.escape(id) + " .label");
      if (!label) { return null; }
      var time = label.querySelector("time");
      return time ? time.textContent : label.firstChild ? label.firstChild.textContent : "";
    }

    function summary(id, cell, none) {
      var dd = document.getElementById(cell);
      if (!dd) { return; }
      var label = id ? labelOf(id) : null;
      setText(dd, label === null ? none : label);
    }

    var CHOICES = ["yes", "maybe", "no"];
    var pending = {};  // options voted on since the last summary: their "who said what" is redone

    function options() { return document.querySelectorAll("li.option[data-option]"); }

    function needsReload(state) {
      if (state.status !== article.dataset.status) { return true; }
      var shown = options();
      if (shown.length !== Object.keys(state.tallies).length) { return true; }
      for (var i = 0; i < shown.length; i++) {
        if (!state.tallies[shown[i].dataset.option]) { return true; }
      }
      var rows = document.querySelectorAll("tr[data-user]");
      return shown.length > 0 && rows.length !== state.participants;
    }

    function cellOf(user, option) {
      var row = document.querySelector('tr[data-user="' + CSS.escape(user) + '"]');
      return row ? row.querySelector('td[data-option="' + CSS.escape(option) + '"]') : null;
    }

    function applyVote(change) {
      // One answer: the grid's cell, and the viewer's own buttons when it is theirs.
      var item = document.getElementById("option-" + change.option);
      if (!item) { reload(); return; }
      pending[change.option] = true;
      var cell = cellOf(change.by, change.option);
      if (cell) { cell.className = change.choice; setText(cell, change.choice); }
      if (change.by !== viewer) { return; }
      setText(item.querySelector(".yours"), "Your answer: " + change.choice);
      item.querySelectorAll("form.vote button[name=choice]").forEach(function (button) {
        if (button.value === change.choice) { button.setAttribute("aria-pressed", "true"); }
        else { button.removeAttribute("aria-pressed"); }
      });
    }

    function redoWho(id, item, tally) {
      // "Who said what" of an option from its column of the grid (only participants' answers
      // count, and each participant has a row); false when it does not add up to the tallies.
      var said = { yes: [], maybe: [], no: [] };
      document.querySelectorAll('tr[data-user] td[data-option="' + CSS.escape(id) + '"]')
        .forEach(function (cell) {
          var answer = cell.textContent;
          if (said[answer]) { said[answer].push(cell.parentNode.dataset.user); }
        });
      for (var i = 0; i < CHOICES.length; i++) {
        if (said[CHOICES[i]].length !== tally[i]) { return false; }
        said[CHOICES[i]].sort();
      }
      setText(item.querySelector(".who"), "Yes: " + who(said.yes) + ". Maybe: " +
        who(said.maybe) + ". No: " + who(said.no) + ".");
      return true;
    }

    function applyState(state) {
      if (needsReload(state)) { reload(); return; }
      var shown = options();
      for (var i = 0; i < shown.length; i++) {
        var item = shown[i];
        var id = item.dataset.option;
        var tally = state.tallies[id];
        CHOICES.forEach(function (choice, index) {
          setText(item.querySelector('[data-count="' + choice + '"]'), tally[index] + " " + choice);
        });
        var leading = id === state.leading_time || id === state.leading_place;
        item.classList.toggle("leading", leading);
        setText(item.querySelector(".mark"), state.decided.indexOf(id) >= 0 ? " (decided)" :
          leading ? " (leading)" : "");
        if (pending[id] && !redoWho(id, item, tally)) { reload(); return; }
      }
      pending = {};
      summary(state.leading_time, "leading-time", "no time has a yes yet");
      summary(state.leading_place, "leading-place", "no place has a yes yet");
    }


    function addComment(comment) {
      var list = document.getElementById("comment-list");
      if (!list || document.getElementById("comment-" + comment.id)) { return; }
      var item = document.createElement("li");
      item.id = "comment-" + comment.id;
      var by = document.createElement("p");
      by.className = "by";
      by.appendChild(document.createTextNode(comment.by + " \u00b7 "));
      var time = document.createElement("time");
      time.setAttribute("datetime", comment.iso);
      time.textContent = when(comment.iso, article.dataset.zone);
      by.appendChild(time);
      var text = document.createElement("p");
      text.className = "text";
      text.textContent = comment.text;
      item.appendChild(by);
      item.appendChild(text);
      list.appendChild(item);
      var none = document.getElementById("no-comments");
      if (none) { none.parentNode.removeChild(none); }
    }


    function tell(change) {
      if (!announce || change.by === viewer) { return; }
      var what = {
        voted: "voted", commented: "commented", option_added: "proposed an option",
        decided: "decided", reopened: "reopened the event", cancelled: "cancelled the event"
      }[change.kind];
      if (what) { announce.textContent = change.by + " " + what + "."; }
    }

    follow(article, function (data) {
      if (data.event !== article.dataset.event) { return; }
      var change = data.change || {};
      if (change.comment) { addComment(change.comment); }
      if (change.kind === "voted" && change.option) { applyVote(change); }
      if (data.state) { applyState(data.state); }
      if (data.change) { tell(data.change); }
    });
  }

  /* "My events" (/u): every event of the user, each row updated from /u/stream. */
  function myEvents(list) {
    var announce = document.getElementById("live-updates");
    var viewer = list.dataset.viewer;

    function applyState(row, state) {
      var cell = row.querySelector('[data-field="time"]');
      var at = state.leading_time_at;
      if (!at) { setText(cell, "no time has a yes yet"); }
      else if (!cell.querySelector("time") || cell.querySelector("time").getAttribute("datetime") !== at) {
        var stamp = document.createElement("time");
        stamp.setAttribute("datetime", at);
        stamp.textContent = when(at, list.dataset.zone);
        cell.textContent = "";
        cell.appendChild(stamp);
      }
      setText(row.querySelector('[data-field="place"]'),
        state.leading_place_name || "no place has a yes yet");
      setText(row.querySelector('[data-field="answered"]'),
        state.answered + " of " + state.participants + " answered");
    }

    follow(list, function (data) {
      var row = document.getElementById("event-" + data.event);
      var state = data.state;
      if (!state) { return; }
      // an event new to the page, or a new status: the server draws it anew (a stream gets no
      // frame of an event its user left: the row goes at the next reload)
      if (!row || state.status !== row.dataset.status) {
        reload();
        return;
      }
      applyState(row, state);
      if (announce && data.change && data.change.by !== viewer) {
        announce.textContent = data.change.by + " changed " + state.title + ".";
      }
    });
  }

  var article = document.getElementById("event");
  if (article && article.dataset.stream) { eventPage(article); }
  var list = document.getElementById("my-events");
  if (list && list.dataset.stream) { myEvents(list); }
})();
