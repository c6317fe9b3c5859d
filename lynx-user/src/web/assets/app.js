// Lynx dashboard: refreshes the page's figures from /api/v1 every few seconds while the tab
// is visible, sorts the container table, and sends actions as POSTs with the CSRF token.
'use strict';

(function () {
  const REFRESH_MS = 2000;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const page = document.body.dataset.page;
  const params = new URLSearchParams(location.search);
  let sort = params.get('sort') || 'n';
  let desc = params.get('desc') === '1';
  let busy = false;

  function setFields(fields) {
    for (const field of fields) {
      const element = document.querySelector('[data-field="' + CSS.escape(field.key) + '"]');
      if (element && element.textContent !== field.value) {
        element.textContent = field.value;
      }
    }
  }

  function setRows(overview) {
    const body = document.querySelector('#containers tbody');
    if (!body) {
      return;
    }
    const rows = overview.rows.map(function (row) {
      const tr = document.createElement('tr');
      tr.dataset.name = row.name;
      row.cells.forEach(function (cell, i) {
        const td = document.createElement('td');
        if (i === 0) {
          const link = document.createElement('a');
          link.href = '/containers/' + encodeURIComponent(row.name);
          link.textContent = cell;
          td.appendChild(link);
        } else {
          td.textContent = cell;
        }
        tr.appendChild(td);
      });
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
    if (!response.ok) {
      throw new Error(url + ': ' + response.status);
    }
    return response.json();
  }

  async function refreshCharts() {
    for (const which of ['requests', 'active']) {
      const figure = document.getElementById('chart-' + which);
      if (!figure) {
        continue;
      }
      const response = await fetch('/chart/' + which + '.svg', { credentials: 'same-origin', cache: 'no-store' });
      if (response.ok) {
        const svg = new DOMParser().parseFromString(await response.text(), 'image/svg+xml');
        figure.replaceChildren(document.importNode(svg.documentElement, true));
      }
    }
  }

  async function refresh() {
    if (document.visibilityState !== 'visible' || busy) {
      return;
    }
    busy = true;
    try {
      if (page === 'overview') {
        const overview = await getJson('/api/v1/snapshot?sort=' + sort + '&desc=' + (desc ? 1 : 0));
        setFields(overview.fields);
        setRows(overview);
        await refreshCharts();
        document.getElementById('updated').textContent = 'as of ' + overview.timestamp;
      } else if (page === 'container') {
        const name = document.getElementById('container').dataset.name;
        setFields(await getJson('/api/v1/containers/' + encodeURIComponent(name)));
        document.getElementById('updated').textContent = 'updated ' + new Date().toISOString();
      }
    } catch (error) {
      document.getElementById('updated').textContent = 'refresh failed: ' + error.message;
    } finally {
      busy = false;
    }
  }

  async function post(url, what) {
    const message = document.getElementById('message');
    message.textContent = what + '...';
    try {
      const response = await fetch(url, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': csrf },
      });
      const type = response.headers.get('content-type') || '';
      const outcome = type.startsWith('application/json')
        ? await response.json()
        : { ok: false, message: await response.text() };
      message.textContent = (outcome.ok ? '' : 'failed: ') + outcome.message;
      message.className = outcome.ok ? 'ok' : 'error';
      return outcome.ok;
    } catch (error) {
      message.textContent = 'failed: ' + error.message;
      message.className = 'error';
      return false;
    }
  }

  document.addEventListener('click', async function (event) {
    const sortLink = event.target.closest('a[data-sort]');
    if (sortLink) {
      event.preventDefault();
      const key = sortLink.dataset.sort;
      desc = key === sort ? !desc : false;
      sort = key;
      history.replaceState(null, '', '/?sort=' + sort + (desc ? '&desc=1' : ''));
      refresh();
      return;
    }
    const button = event.target.closest('button[data-action], button[data-image]');
    if (!button) {
      return;
    }
    let url;
    let what;
    if (button.dataset.action) {
      const name = document.getElementById('container').dataset.name;
      what = button.dataset.action + ' ' + name;
      url = '/api/v1/containers/' + encodeURIComponent(name) + '/' + button.dataset.action;
    } else {
      what = 'delete image ' + button.dataset.image;
      url = '/api/v1/images/' + encodeURIComponent(button.dataset.image) + '/delete';
    }
    if (button.dataset.confirm && !window.confirm(what.charAt(0).toUpperCase() + what.slice(1) + '?')) {
      return;
    }
    if (await post(url, what)) {
      if (button.dataset.image) {
        button.closest('tr').remove();
      }
      refresh();
    }
  });

  document.addEventListener('visibilitychange', refresh);
  setInterval(refresh, REFRESH_MS);
})();
