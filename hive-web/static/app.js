// hyperhive dashboard: follows /api/events (server-sent events) and applies
// them to the page in place. Everything here is optional: every form works
// without it. It never inserts agent-written text as HTML: status text goes
// through textContent, and sections are swapped for the same sections of a
// freshly fetched copy of this page, rendered (and escaped) by the server.
(function () {
  'use strict';

  var body = document.body;

  // Destructive lifecycle buttons ask once. Without this script the server
  // asks instead, with a confirmation page.
  document.querySelectorAll('form[data-confirm]').forEach(function (form) {
    form.addEventListener('submit', function (ev) {
      if (!window.confirm(form.getAttribute('data-confirm'))) {
        ev.preventDefault();
        return;
      }
      var yes = document.createElement('input');
      yes.type = 'hidden';
      yes.name = 'confirm';
      yes.value = 'yes';
      form.appendChild(yes);
    });
  });

  var since = body.getAttribute('data-since');
  if (since === null || !window.EventSource) {
    return;
  }

  var banner = document.getElementById('core-banner');
  var refreshTimer = null;

  function setText(selector, text) {
    document.querySelectorAll(selector).forEach(function (el) {
      el.textContent = text;
    });
  }

  function cssEscape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/[^a-z0-9-]/g, '');
  }

  // A section the operator is typing into is left alone, so a refresh never
  // eats a half-written answer.
  function busy(el) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) {
      return true;
    }
    var fields = el.querySelectorAll('textarea, input:not([type=hidden])');
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if ((f.type === 'radio' || f.type === 'checkbox') ? f.checked : f.value !== '') {
        return true;
      }
    }
    return false;
  }

  function refresh() {
    refreshTimer = null;
    fetch(window.location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, 'text/html');
        document.querySelectorAll('[data-live]').forEach(function (el) {
          if (!el.id || busy(el)) { return; }
          var fresh = doc.getElementById(el.id);
          if (fresh) { el.replaceWith(document.importNode(fresh, true)); }
        });
      })
      .catch(function () { /* the next event tries again */ });
  }

  function scheduleRefresh() {
    if (refreshTimer === null) {
      refreshTimer = window.setTimeout(refresh, 150);
    }
  }

  var source = new EventSource('/api/events?since=' + encodeURIComponent(since));

  source.addEventListener('hive', function (ev) {
    var rec;
    try { rec = JSON.parse(ev.data); } catch (e) { return; }
    var e = rec.event || {};
    if (e.AgentStatus) {
      setText('[data-status-of="' + cssEscape(e.AgentStatus.agent) + '"]', e.AgentStatus.text);
    } else if (e.AgentRunState) {
      var state = String(e.AgentRunState.state);
      document.querySelectorAll('[data-state-of="' + cssEscape(e.AgentRunState.agent) + '"]').forEach(function (el) {
        el.textContent = state;
        el.className = el.className.replace(/\b(unknown|stopped|starting|running|paused|crashed)\b/g, '') + ' ' + state;
      });
    }
    scheduleRefresh();
  });

  source.addEventListener('reload', function () {
    window.location.reload();
  });

  source.addEventListener('core', function (ev) {
    var up;
    try { up = JSON.parse(ev.data).up; } catch (e) { return; }
    if (banner) { banner.hidden = !!up; }
    if (up && body.hasAttribute('data-core-down')) {
      window.location.reload();
    }
  });
})();
