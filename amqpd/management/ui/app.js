// amqpd management UI. One file, no dependencies, no build step: it reads only the HTTP API
// (RabbitMQ's JSON shapes, so it also works against RabbitMQ's own /api) with Basic auth, the
// credentials kept in sessionStorage (gone when the tab closes). Pages are built once and their
// data parts refreshed on a timer, so a half-typed form is never wiped by a refresh.
'use strict';
(function () {
  const AUTH_KEY = 'amqpd.auth';
  const USER_KEY = 'amqpd.user';
  const REFRESH_KEY = 'amqpd.refresh';
  const HISTORY = 60;                 // samples kept for the overview charts

  const $ = (id) => document.getElementById(id);
  const main = $('main');
  let current = null;                 // the page shown: {refresh()}
  let generation = 0;                 // bumped on navigation; late answers of old pages are dropped
  let timer = null;
  let refreshing = false;
  const history = [];                 // overview samples, kept across navigation

  // ---------------------------------------------------------------- DOM helpers
  // h('tag.class', {attr: v, onclick: f}, child, ...): children are nodes, strings (as text,
  // never as HTML: names come from clients) or arrays of them; null/false are skipped.
  function h(spec, attrs, ...kids) {
    const [tag, ...classes] = spec.split('.');
    const el = document.createElement(tag || 'div');
    if (classes.length) el.className = classes.join(' ');
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
        else if (k === 'text') el.textContent = v;
        else if (k === 'value') el.value = v;
        else if (k === 'class') el.className = v;
        else el.setAttribute(k, v === true ? '' : v);
      }
    }
    append(el, kids);
    return el;
  }
  function append(el, kids) {
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) append(el, kid);
      else el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  function replace(el, ...kids) { el.replaceChildren(); return append(el, kids); }

  let flashTimer = null;
  function flash(message, isError) {
    const el = $('flash');
    el.textContent = message;
    el.className = isError ? 'error' : '';
    el.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { el.hidden = true; }, isError ? 8000 : 4000);
  }

  // ---------------------------------------------------------------- formatting
  const fmtNum = (n) => (n === null || n === undefined || n === '') ? '' :
    (typeof n === 'number' ? n.toLocaleString('en-US') : String(n));
  function fmtRate(details) {
    if (!details || typeof details.rate !== 'number') return '';
    const r = details.rate;
    return (r >= 100 ? Math.round(r).toLocaleString('en-US') : r.toFixed(1)) + '/s';
  }
  const rateOf = (obj, key) => obj && obj.message_stats ? obj.message_stats[key + '_details'] : undefined;
  const rateNum = (obj, key) => { const d = rateOf(obj, key); return d && typeof d.rate === 'number' ? d.rate : 0; };
  function fmtBytes(n) {
    if (typeof n !== 'number') return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n >= 100 ? 0 : 1) : n) + ' ' + units[i];
  }
  function fmtUptime(ms) {
    if (typeof ms !== 'number') return '';
    const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600),
      mm = Math.floor(s % 3600 / 60);
    return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : mm ? `${mm}m ${s % 60}s` : `${s}s`;
  }
  const fmtJSON = (v) => (v && typeof v === 'object' && Object.keys(v).length) ? JSON.stringify(v) : '';
  const tag = (text, cls) => h('span.tag' + (cls ? '.' + cls : ''), {text});
  const vhostPath = (v) => encodeURIComponent(v);
  const exName = (n) => n === '' ? 'amq.default' : n;          // the API's name for the default exchange
  const exLabel = (n) => n === '' ? '(AMQP default)' : n;

  // ---------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, reason) { super(reason); this.status = status; }
  }
  async function api(method, path, body, headers) {
    const init = {method, credentials: 'omit', cache: 'no-store',
      headers: Object.assign({Authorization: 'Basic ' + (sessionStorage.getItem(AUTH_KEY) || '')}, headers || {})};
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const r = await fetch('api' + path, init);        // relative: works behind a path prefix
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    // 401 is both "who are you?" (no or wrong credentials: log in again) and, as in RabbitMQ,
    // "not_authorised": a known user whose tags do not allow this request (stay, show why)
    if (r.status === 401 && path !== '/whoami' && !(data && data.error === 'not_authorised')) {
      showLogin('Your session is no longer valid: log in again.');
    }
    if (!r.ok) {
      const reason = data && (data.reason || data.error) || `${r.status} ${r.statusText}`;
      throw new ApiError(r.status, typeof reason === 'string' ? reason : JSON.stringify(reason));
    }
    return data;
  }
  // run an action from a button or form: report success or the API's reason, then refresh
  async function act(promise, okMessage) {
    try {
      const result = await promise;
      if (okMessage) flash(typeof okMessage === 'function' ? okMessage(result) : okMessage);
      refreshNow();
      return result;
    } catch (e) {
      flash(e.message || String(e), true);
      return undefined;
    }
  }
  function parseArgs(text) {
    // a JSON object, or "key = value" lines (numbers and booleans typed as such)
    text = (text || '').trim();
    if (!text) return {};
    if (text.startsWith('{')) return JSON.parse(text);
    const out = {};
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      const i = line.indexOf('=');
      if (i < 0) throw new Error(`"${line.trim()}": expected key = value`);
      const k = line.slice(0, i).trim(), v = line.slice(i + 1).trim();
      out[k] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v === 'true' ? true : v === 'false' ? false : v;
    }
    return out;
  }

  // ---------------------------------------------------------------- tables, pager, forms
  // columns: [{key, title, num, get(row) -> node|string}]; rows get data-* from rowAttrs(row)
  // sorting (optional): {field, reverse, by(field)}; a column with `sort` (the API's field,
  // dotted for nested ones) gets a clickable header
  function table(columns, rows, rowAttrs, emptyText, sorting) {
    if (!rows.length) return h('p.empty', {text: emptyText || 'Nothing here.'});
    const header = (c) => {
      if (!sorting || !c.sort) return h('th' + (c.num ? '.num' : ''), {text: c.title});
      const mark = sorting.field === c.sort ? (sorting.reverse ? ' ▼' : ' ▲') : '';
      return h('th.sortable' + (c.num ? '.num' : ''), {title: 'Sort by ' + c.title.toLowerCase(),
        onclick: () => sorting.by(c.sort)}, c.title + mark);
    };
    return h('table', null,
      h('thead', null, h('tr', null, columns.map(header))),
      h('tbody', null, rows.map((row) => h('tr', rowAttrs ? rowAttrs(row) : null,
        columns.map((c) => {
          const v = c.get ? c.get(row) : fmtNum(row[c.key]);
          return h('td.c-' + c.key + (c.num ? '.num' : ''), null, v);
        })))));
  }
  function field(label, input) { return [h('label', {text: label}), input]; }
  function select(name, options, value) {
    return h('select', {name}, options.map((o) => {
      const [v, t] = Array.isArray(o) ? o : [o, o];
      return h('option', {value: v, selected: v === value, text: t});
    }));
  }
  // keep a <select>'s choice while its options are refreshed
  function fillSelect(sel, values) {
    const keep = sel.value;
    const now = Array.from(sel.options).map((o) => o.value).join('\n');
    if (now === values.join('\n')) return;
    replace(sel, values.map((v) => h('option', {value: v, text: v})));
    if (values.includes(keep)) sel.value = keep;
  }
  function formValues(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      out[el.name] = el.type === 'checkbox' ? el.checked : el.value;
    }
    return out;
  }
  function panelForm(id, rows, submitText, onsubmit) {
    const form = h('form.panel', {id},
      rows,
      h('div.actions', null, h('button.primary', {type: 'submit', text: submitText})));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      try { onsubmit(formValues(form), form); } catch (e) { flash(e.message || String(e), true); }
    });
    return form;
  }

  // A filterable, paged list over the API's paging (?page=&page_size=&name=&use_regex=), with
  // the same done in the browser when a server answers a plain array.
  function pagedList(path, columns, rowAttrs, emptyText) {
    const state = {page: 1, size: Number(sessionStorage.getItem('amqpd.page_size.' + path)) || 100,
      name: '', regex: false};
    const sorting = {field: '', reverse: false, by(field) {
      if (sorting.field === field) sorting.reverse = !sorting.reverse;
      else { sorting.field = field; sorting.reverse = false; }
      refreshNow();
    }};
    const filter = h('input', {type: 'search', id: 'filter', placeholder: 'Filter by name', value: ''});
    const regex = h('input', {type: 'checkbox', id: 'filter-regex'});
    const size = select('page_size', ['20', '50', '100', '500'].map((v) => [v, v + ' per page']), String(state.size));
    const info = h('span.muted', {id: 'pager-info'});
    const prev = h('button', {type: 'button', text: '‹ Prev', id: 'page-prev'});
    const next = h('button', {type: 'button', text: 'Next ›', id: 'page-next'});
    const body = h('div.list');
    let debounce = null;
    filter.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { state.name = filter.value; state.page = 1; refreshNow(); }, 250);
    });
    regex.addEventListener('change', () => { state.regex = regex.checked; state.page = 1; refreshNow(); });
    size.addEventListener('change', () => {
      state.size = Number(size.value); state.page = 1;
      sessionStorage.setItem('amqpd.page_size.' + path, size.value);
      refreshNow();
    });
    prev.addEventListener('click', () => { if (state.page > 1) { state.page--; refreshNow(); } });
    next.addEventListener('click', () => { state.page++; refreshNow(); });
    const el = h('div', null,
      h('div.toolbar', null, filter, h('label', null, regex, ' regex'), size, prev, next, info),
      body);
    async function refresh() {
      const q = `?page=${state.page}&page_size=${state.size}&name=${encodeURIComponent(state.name)}` +
        `&use_regex=${state.regex}&pagination=true` +
        (sorting.field ? `&sort=${encodeURIComponent(sorting.field)}&sort_reverse=${sorting.reverse}` : '');
      let data;
      try {
        data = await api('GET', path + q);
      } catch (e) {
        if (e.status === 400 && state.page > 1) { state.page = 1; return refresh(); }   // page gone
        throw e;
      }
      let items, pageCount, filtered, total;
      if (Array.isArray(data)) {          // no server paging: do it here
        let all = data;
        if (state.name) {
          let re = null;
          try { re = state.regex ? new RegExp(state.name) : null; } catch (e) { re = /$^/; }
          all = all.filter((x) => re ? re.test(x.name) : x.name.includes(state.name));
        }
        pageCount = Math.max(1, Math.ceil(all.length / state.size));
        if (state.page > pageCount) state.page = pageCount;
        items = all.slice((state.page - 1) * state.size, state.page * state.size);
        filtered = all.length; total = data.length;
      } else {
        items = data.items || [];
        pageCount = Math.max(1, data.page_count || 1);
        filtered = data.filtered_count; total = data.total_count;
        if (state.page > pageCount) { state.page = pageCount; return refresh(); }
      }
      prev.disabled = state.page <= 1;
      next.disabled = state.page >= pageCount;
      info.textContent = `page ${state.page} of ${pageCount} · ${fmtNum(filtered)} shown` +
        (total !== filtered ? ` of ${fmtNum(total)}` : '');
      replace(body, table(columns, items, rowAttrs, emptyText, Array.isArray(data) ? null : sorting));
      return items;
    }
    return {el, refresh};
  }

  // ---------------------------------------------------------------- SVG line chart
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  // series: [{label, color, key}], samples: [{t, ...}]; y from 0 to a round maximum
  function lineChart(id, title, series, samples, format) {
    const W = 600, H = 170, L = 52, R = 8, T = 8, B = 20;
    const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', id, role: 'img', 'aria-label': title});
    const max = niceMax(Math.max(0, ...samples.flatMap((p) => series.map((se) => p[se.key] || 0))));
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      svg.append(s('line', {x1: L, x2: W - R, y1: y, y2: y, class: 'grid'}));
      svg.append(s('text', {x: L - 6, y: y + 3, 'text-anchor': 'end', class: 'axis'}, format(max * i / 4)));
    }
    const now = samples.length ? samples[samples.length - 1].t : Date.now();
    const t0 = samples.length ? Math.min(samples[0].t, now - 60000) : now - 60000;
    const xOf = (t) => L + (W - L - R) * (t - t0) / Math.max(1, now - t0);
    const yOf = (v) => T + (H - T - B) * (1 - (v || 0) / max);
    const secs = Math.round((now - t0) / 1000);
    svg.append(s('text', {x: L, y: H - 5, class: 'axis'}, `-${secs}s`));
    svg.append(s('text', {x: W - R, y: H - 5, 'text-anchor': 'end', class: 'axis'}, 'now'));
    for (const se of series) {
      if (samples.length === 1) {
        svg.append(s('circle', {cx: xOf(samples[0].t), cy: yOf(samples[0][se.key]), r: 3, fill: se.color}));
        continue;
      }
      const pts = samples.map((p) => `${xOf(p.t).toFixed(1)},${yOf(p[se.key]).toFixed(1)}`).join(' ');
      svg.append(s('polyline', {points: pts, fill: 'none', stroke: se.color, 'stroke-width': 2,
        'vector-effect': 'non-scaling-stroke', 'stroke-linejoin': 'round'}));
    }
    const last = samples[samples.length - 1] || {};
    return h('div.chart', null, h('h2', {text: title}), svg,
      h('div.legend', null, series.map((se) => h('span', null,
        h('i', {style: 'background:' + se.color}), `${se.label} `, h('b', {text: format(last[se.key] || 0)})))));
  }

  const rateFmt = (v) => (v >= 100 ? Math.round(v).toLocaleString('en-US') : Number.isInteger(v) ? String(v) : v.toFixed(v < 1 ? 2 : 1)) + '/s';
  const countFmt = (v) => Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(1);
  const QUEUED = [{label: 'Ready', key: 'ready', color: '#f60'}, {label: 'Unacked', key: 'unacked', color: '#2c7fb8'}];
  function sample(samples, values) {
    samples.push(Object.assign({t: Date.now()}, values));
    while (samples.length > HISTORY) samples.shift();
  }

  // ---------------------------------------------------------------- pages
  function card(label, value, opts) {
    opts = opts || {};
    return h('div.card' + (opts.alarm ? '.alarm' : ''), {id: opts.id},
      h('div.label', {text: label}), h('div.value', {text: value}), opts.extra || null);
  }
  function usage(used, limit, alarm) {
    const pct = limit ? Math.min(100, 100 * used / limit) : 0;
    return h('div.bar' + (alarm ? '.alarm' : ''), {title: limit ? pct.toFixed(1) + '%' : ''},
      h('span', {style: `width:${pct}%`}));
  }

  function overviewPage() {
    const cards = h('div.cards', {id: 'totals'});
    const charts = h('div.charts');
    const nodes = h('div', {id: 'nodes'});
    const listeners = h('div', {id: 'listeners'});
    const title = h('h1', {id: 'overview-title', text: 'Overview'});
    const el = h('div', null, title, cards, charts,
      h('h2', {text: 'Nodes'}), nodes, h('h2', {text: 'Ports and contexts'}), listeners);
    async function refresh() {
      const [ov, nodeList] = await Promise.all([
        api('GET', '/overview'),
        api('GET', '/nodes').catch((e) => e)]);
      const qt = ov.queue_totals || {}, ot = ov.object_totals || {};
      const ms = ov.message_stats || {};
      const rate = (k) => (ms[k + '_details'] && ms[k + '_details'].rate) || 0;
      sample(history, {ready: qt.messages_ready || 0, unacked: qt.messages_unacknowledged || 0,
        publish: rate('publish'), deliver: rate('deliver_get'), ack: rate('ack'), confirm: rate('confirm')});
      const alarms = [];
      const nodesError = nodeList instanceof Error ? nodeList : null;
      for (const n of nodesError ? [] : nodeList) {
        if (n.mem_alarm) alarms.push(`memory (${n.name})`);
        if (n.disk_free_alarm) alarms.push(`disk (${n.name})`);
      }
      replace(cards,
        card('Ready', fmtNum(qt.messages_ready || 0), {id: 'total-ready'}),
        card('Unacked', fmtNum(qt.messages_unacknowledged || 0), {id: 'total-unacked'}),
        card('Total', fmtNum(qt.messages || 0), {id: 'total-messages'}),
        card('Connections', fmtNum(ot.connections || 0)),
        card('Channels', fmtNum(ot.channels || 0)),
        card('Exchanges', fmtNum(ot.exchanges || 0)),
        card('Queues', fmtNum(ot.queues || 0), {id: 'total-queues'}),
        card('Consumers', fmtNum(ot.consumers || 0)),
        card('Alarms', alarms.length ? alarms.join(', ') : 'none', {id: 'alarms', alarm: alarms.length > 0}));
      replace(charts,
        lineChart('chart-queued', 'Queued messages', QUEUED, history, countFmt),
        lineChart('chart-rates', 'Message rates', [
          {label: 'Publish', key: 'publish', color: '#f60'},
          {label: 'Deliver / get', key: 'deliver', color: '#2c7fb8'},
          {label: 'Ack', key: 'ack', color: '#41ab5d'},
          {label: 'Confirm', key: 'confirm', color: '#8856a7'}], history, rateFmt));
      if (nodesError) {
        replace(nodes, h('p.empty', {text: `Node details unavailable: ${nodesError.message}`}));
      } else {
        replace(nodes, table([
          {key: 'name', title: 'Name'},
          {key: 'memory', title: 'Memory', get: (n) => [`${fmtBytes(n.mem_used)} of ${fmtBytes(n.mem_limit)} `,
            n.mem_alarm ? tag('alarm', 'bad') : null, usage(n.mem_used, n.mem_limit, n.mem_alarm)]},
          {key: 'disk', title: 'Disk free', get: (n) => [`${fmtBytes(n.disk_free)} (limit ${fmtBytes(n.disk_free_limit)}) `,
            n.disk_free_alarm ? tag('alarm', 'bad') : null]},
          {key: 'fd', title: 'File descriptors', get: (n) => n.fd_total ? [`${fmtNum(n.fd_used)} of ${fmtNum(n.fd_total)}`,
            usage(n.fd_used, n.fd_total, false)] : fmtNum(n.fd_used)},
          {key: 'uptime', title: 'Uptime', get: (n) => fmtUptime(n.uptime)},
          {key: 'state', title: 'State', get: (n) => n.running === false ? tag('stopped', 'bad') : tag('running', 'ok')},
        ], nodeList, (n) => ({'data-name': n.name})));
      }
      replace(listeners, table([
        {key: 'protocol', title: 'Protocol'},
        {key: 'ip_address', title: 'Bound to'},
        {key: 'port', title: 'Port', num: true, get: (l) => String(l.port)},
      ], ov.listeners || [], null, 'No listeners reported.'));
      const version = ov.product_name ? `${ov.product_name} ${ov.product_version || ''}` :
        (ov.rabbitmq_version ? `RabbitMQ ${ov.rabbitmq_version}` : '');
      replace(title, 'Overview ', h('small', {text: [ov.node, version].filter(Boolean).join(' · ')}));
    }
    return {el, refresh};
  }

  function queueFeatures(q) {
    const a = q.arguments || {};
    const names = {'x-message-ttl': 'TTL', 'x-expires': 'Exp', 'x-max-length': 'Lim', 'x-max-length-bytes': 'Lim B',
      'x-dead-letter-exchange': 'DLX', 'x-dead-letter-routing-key': 'DLK', 'x-max-priority': 'Pri',
      'x-overflow': 'Ovfl', 'x-single-active-consumer': 'SAC', 'x-queue-mode': 'Mode', 'x-delivery-limit': 'DLim'};
    return [q.durable ? tag('D') : null, q.auto_delete ? tag('AD') : null, q.exclusive ? tag('Excl') : null,
      Object.keys(a).filter((k) => names[k]).map((k) => h('span.tag', {title: `${k}: ${JSON.stringify(a[k])}`, text: names[k]})),
      q.policy ? h('span.tag', {title: 'policy', text: q.policy}) : null];
  }
  const queueHref = (q) => `#/queues/${vhostPath(q.vhost)}/${encodeURIComponent(q.name)}`;
  const exchangeHref = (vhost, name) => `#/exchanges/${vhostPath(vhost)}/${encodeURIComponent(exName(name))}`;

  async function vhostNames() {
    try { return (await api('GET', '/vhosts')).map((v) => v.name); } catch (e) { return ['/']; }
  }

  function queuesPage() {
    const list = pagedList('/queues', [
      {key: 'vhost', title: 'Virtual host', sort: 'vhost', get: (q) => q.vhost},
      {key: 'name', title: 'Name', sort: 'name', get: (q) => h('a', {href: queueHref(q), text: q.name})},
      {key: 'type', title: 'Type', get: (q) => q.type || 'classic'},
      {key: 'features', title: 'Features', get: queueFeatures},
      {key: 'state', title: 'State', get: (q) => q.state === 'running' || !q.state ? tag(q.state || 'running', 'ok') : tag(q.state, 'bad')},
      {key: 'messages_ready', title: 'Ready', num: true, sort: 'messages_ready'},
      {key: 'messages_unacknowledged', title: 'Unacked', num: true, sort: 'messages_unacknowledged'},
      {key: 'messages', title: 'Total', num: true, sort: 'messages'},
      {key: 'incoming', title: 'Incoming', num: true, sort: 'message_stats.publish_details.rate', get: (q) => fmtRate(rateOf(q, 'publish'))},
      {key: 'deliver', title: 'Deliver / get', num: true, get: (q) => fmtRate(rateOf(q, 'deliver_get'))},
      {key: 'ack', title: 'Ack', num: true, get: (q) => fmtRate(rateOf(q, 'ack'))},
      {key: 'consumers', title: 'Consumers', num: true, sort: 'consumers'},
    ], (q) => ({'data-vhost': q.vhost, 'data-name': q.name}), 'No queues.');
    const vhostSel = select('vhost', ['/'], '/');
    const addForm = panelForm('add-queue', [
      field('Virtual host', vhostSel),
      field('Name', h('input', {name: 'name', required: true})),
      field('Durability', select('durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
      field('Auto delete', select('auto_delete', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Arguments', h('textarea', {name: 'arguments', placeholder: 'x-message-ttl = 60000\nx-max-length = 1000'})),
    ], 'Add queue', (v, form) => {
      const body = {durable: v.durable === 'true', auto_delete: v.auto_delete === 'true', arguments: parseArgs(v.arguments)};
      act(api('PUT', `/queues/${vhostPath(v.vhost)}/${encodeURIComponent(v.name)}`, body), `Queue ${v.name} declared.`)
        .then(() => form.elements.name.value = '');
    });
    const el = h('div', null, h('h1', {text: 'Queues'}), list.el,
      h('details', null, h('summary', {text: 'Add a queue'}), addForm));
    let vhostsLoaded = false;
    async function refresh() {
      await list.refresh();
      if (!vhostsLoaded) { vhostsLoaded = true; fillSelect(vhostSel, await vhostNames()); }
    }
    return {el, refresh};
  }

  function propsList(pairs) {
    return h('dl.props', null, pairs.filter((p) => p && p[1] !== '' && p[1] !== null && p[1] !== undefined)
      .map(([k, v, id]) => [h('dt', {text: k}), h('dd', {id}, v)]));
  }

  function publishForm(id, vhost, exchange, fixedKey) {
    const rows = [];
    if (fixedKey === undefined) rows.push(field('Routing key', h('input', {name: 'routing_key'})));
    rows.push(
      field('Delivery mode', select('delivery_mode', [['1', '1 - Non-persistent'], ['2', '2 - Persistent']], '2')),
      field('Headers', h('input', {name: 'headers', placeholder: 'key = value, comma separated, or JSON'})),
      field('Properties', h('input', {name: 'properties', placeholder: 'content_type = text/plain, priority = 1'})),
      field('Payload', h('textarea', {name: 'payload'})));
    return panelForm(id, rows, 'Publish message', (v) => {
      const props = parseArgs((v.properties || '').replace(/,\s*/g, '\n'));
      props.delivery_mode = Number(v.delivery_mode);
      const headers = parseArgs((v.headers || '').trim().startsWith('{') ? v.headers : (v.headers || '').replace(/,\s*/g, '\n'));
      if (Object.keys(headers).length) props.headers = headers;
      const body = {properties: props, routing_key: fixedKey === undefined ? v.routing_key : fixedKey,
        payload: v.payload, payload_encoding: 'string'};
      act(api('POST', `/exchanges/${vhostPath(vhost)}/${encodeURIComponent(exName(exchange))}/publish`, body),
        (r) => r && r.routed === false ? 'Message published, but not routed.' : 'Message published.');
    });
  }

  function bindingsTable(rows, vhost, showSource) {
    return table([
      showSource ? {key: 'source', title: 'From', get: (b) => b.source === '' ? '(default exchange binding)' :
        h('a', {href: exchangeHref(vhost, b.source), text: b.source})} :
        {key: 'destination', title: 'To', get: (b) => b.destination_type === 'queue' ?
          h('a', {href: `#/queues/${vhostPath(vhost)}/${encodeURIComponent(b.destination)}`, text: b.destination}) :
          h('a', {href: exchangeHref(vhost, b.destination), text: b.destination})},
      {key: 'routing_key', title: 'Routing key', get: (b) => b.routing_key},
      {key: 'arguments', title: 'Arguments', get: (b) => fmtJSON(b.arguments)},
      {key: 'unbind', title: '', get: (b) => b.source === '' ? '' : h('button.danger', {type: 'button', text: 'Unbind',
        onclick: () => act(api('DELETE', `/bindings/${vhostPath(vhost)}/e/${encodeURIComponent(b.source)}/` +
          `${b.destination_type === 'queue' ? 'q' : 'e'}/${encodeURIComponent(b.destination)}/` +
          encodeURIComponent(b.properties_key || '~')), 'Binding removed.')})},
    ], rows, (b) => ({'data-source': b.source, 'data-routing-key': b.routing_key}), 'No bindings.');
  }

  function queuePage(vhost, name) {
    const base = `/queues/${vhostPath(vhost)}/${encodeURIComponent(name)}`;
    const details = h('div', {id: 'queue-details'});
    const charts = h('div.charts');
    const samples = [];
    const consumers = h('div', {id: 'consumers'});
    const bindings = h('div', {id: 'bindings'});
    const got = h('div', {id: 'got-messages'});
    const bindForm = panelForm('add-binding', [
      field('From exchange', h('input', {name: 'source', required: true})),
      field('Routing key', h('input', {name: 'routing_key'})),
      field('Arguments', h('textarea', {name: 'arguments'})),
    ], 'Bind', (v) => act(api('POST', `/bindings/${vhostPath(vhost)}/e/${encodeURIComponent(v.source)}/q/${encodeURIComponent(name)}`,
      {routing_key: v.routing_key, arguments: parseArgs(v.arguments)}), 'Queue bound.'));
    const getForm = panelForm('get-messages', [
      field('Ack mode', select('ackmode', [['ack_requeue_true', 'Nack message requeue true'],
        ['ack_requeue_false', 'Automatic ack'], ['reject_requeue_true', 'Reject requeue true'],
        ['reject_requeue_false', 'Reject requeue false']], 'ack_requeue_true')),
      field('Encoding', select('encoding', [['auto', 'Auto string / base64'], ['base64', 'base64']], 'auto')),
      field('Messages', h('input', {name: 'count', type: 'number', min: 1, value: '1'})),
    ], 'Get messages', (v) => {
      api('POST', base + '/get', {count: Number(v.count) || 1, ackmode: v.ackmode, encoding: v.encoding, truncate: 50000})
        .then((msgs) => {
          replace(got, msgs.length ? msgs.map((m, i) => h('div', {class: 'message'},
            h('h2', {text: `Message ${i + 1}`}),
            propsList([['Exchange', exLabel(m.exchange)], ['Routing key', m.routing_key],
              ['Redelivered', String(m.redelivered)], ['Messages left', fmtNum(m.message_count)],
              ['Properties', fmtJSON(m.properties)], ['Payload', `${fmtNum(m.payload_bytes)} bytes, encoding ${m.payload_encoding}`]]),
            h('pre.payload', {text: m.payload})))
            : h('p.empty', {text: 'Queue is empty.'}));
          refreshNow();
        }).catch((e) => flash(e.message, true));
    });
    const purge = h('button.danger', {type: 'button', id: 'purge', text: 'Purge messages', onclick: () => {
      if (confirm(`Purge all ready messages of queue ${name}?`)) act(api('DELETE', base + '/contents'), 'Queue purged.');
    }});
    const del = h('button.danger', {type: 'button', id: 'delete-queue', text: 'Delete queue', onclick: () => {
      if (confirm(`Delete queue ${name}?`)) {
        act(api('DELETE', base), `Queue ${name} deleted.`).then((r) => { if (r !== undefined) location.hash = '#/queues'; });
      }
    }});
    const el = h('div', null,
      h('h1', null, 'Queue ', h('span', {id: 'queue-name', text: name}), ' ', h('small', {text: `in virtual host ${vhost}`})),
      details, charts,
      h('h2', {text: 'Consumers'}), consumers,
      h('h2', {text: 'Bindings'}), bindings, h('details', null, h('summary', {text: 'Add a binding to this queue'}), bindForm),
      h('h2', {text: 'Publish message'}), h('p.muted', {text: 'Published through the default exchange with this queue\'s name as routing key.'}),
      publishForm('publish', vhost, '', name),
      h('h2', {text: 'Get messages'}), h('p.muted', {text: 'Getting messages is a destructive action: with an ack mode other than requeue they are gone.'}),
      getForm, got,
      h('h2', {text: 'Purge and delete'}), h('div.toolbar', null, purge, del));
    async function refresh() {
      let q;
      try {
        q = await api('GET', base);
      } catch (e) {
        if (e.status === 404) { replace(details, h('p.error', {text: `Queue ${name} does not exist (any more).`})); return; }
        throw e;
      }
      replace(details, propsList([
        ['Type', q.type || 'classic'], ['Features', queueFeatures(q)], ['State', q.state],
        ['Ready', fmtNum(q.messages_ready), 'q-ready'], ['Unacked', fmtNum(q.messages_unacknowledged), 'q-unacked'],
        ['Total', fmtNum(q.messages), 'q-messages'], ['Message bytes', fmtBytes(q.message_bytes)],
        ['Consumers', fmtNum(q.consumers)], ['Incoming', fmtRate(rateOf(q, 'publish'))],
        ['Deliver / get', fmtRate(rateOf(q, 'deliver_get'))], ['Ack', fmtRate(rateOf(q, 'ack'))],
        ['Arguments', fmtJSON(q.arguments)], ['Policy', q.policy || ''], ['Operator policy', q.operator_policy || ''],
        ['Effective policy', fmtJSON(q.effective_policy_definition)], ['Exclusive owner', q.owner_pid_details ? q.owner_pid_details.name : ''],
      ]));
      sample(samples, {ready: q.messages_ready || 0, unacked: q.messages_unacknowledged || 0,
        publish: rateNum(q, 'publish'), deliver: rateNum(q, 'deliver_get'), ack: rateNum(q, 'ack')});
      replace(charts,
        lineChart('chart-queue-queued', 'Queued messages', QUEUED, samples, countFmt),
        lineChart('chart-queue-rates', 'Message rates', [
          {label: 'Publish', key: 'publish', color: '#f60'},
          {label: 'Deliver / get', key: 'deliver', color: '#2c7fb8'},
          {label: 'Ack', key: 'ack', color: '#41ab5d'}], samples, rateFmt));
      replace(consumers, table([
        {key: 'channel', title: 'Channel', get: (c) => c.channel_details ? c.channel_details.name : ''},
        {key: 'consumer_tag', title: 'Consumer tag', get: (c) => c.consumer_tag},
        {key: 'ack_required', title: 'Ack required', get: (c) => String(c.ack_required)},
        {key: 'exclusive', title: 'Exclusive', get: (c) => String(c.exclusive)},
        {key: 'prefetch_count', title: 'Prefetch', num: true},
        {key: 'active', title: 'Active', get: (c) => c.active === undefined ? '' : String(c.active)},
      ], q.consumer_details || [], null, 'No consumers.'));
      const bs = await api('GET', base + '/bindings').catch(() => []);
      replace(bindings, bindingsTable(bs, vhost, true));
    }
    return {el, refresh};
  }

  function exchangesPage() {
    const list = pagedList('/exchanges', [
      {key: 'vhost', title: 'Virtual host', sort: 'vhost', get: (x) => x.vhost},
      {key: 'name', title: 'Name', sort: 'name', get: (x) => h('a', {href: exchangeHref(x.vhost, x.name), text: exLabel(x.name)})},
      {key: 'type', title: 'Type', sort: 'type', get: (x) => x.type},
      {key: 'features', title: 'Features', get: (x) => [x.durable ? tag('D') : null, x.auto_delete ? tag('AD') : null,
        x.internal ? tag('I') : null, Object.keys(x.arguments || {}).map((k) => h('span.tag', {text: k === 'alternate-exchange' ? 'AE' : k,
          title: `${k}: ${JSON.stringify(x.arguments[k])}`})), x.policy ? h('span.tag', {title: 'policy', text: x.policy}) : null]},
      {key: 'in', title: 'Message rate in', num: true, get: (x) => fmtRate(rateOf(x, 'publish_in'))},
      {key: 'out', title: 'Message rate out', num: true, get: (x) => fmtRate(rateOf(x, 'publish_out'))},
    ], (x) => ({'data-vhost': x.vhost, 'data-name': x.name}), 'No exchanges.');
    const vhostSel = select('vhost', ['/'], '/');
    const typeSel = select('type', ['direct', 'fanout', 'headers', 'topic'], 'direct');
    const addForm = panelForm('add-exchange', [
      field('Virtual host', vhostSel),
      field('Name', h('input', {name: 'name', required: true})),
      field('Type', typeSel),
      field('Durability', select('durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
      field('Auto delete', select('auto_delete', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Internal', select('internal', [['false', 'No'], ['true', 'Yes']], 'false')),
      field('Arguments', h('textarea', {name: 'arguments', placeholder: 'alternate-exchange = my-ae'})),
    ], 'Add exchange', (v, form) => {
      const body = {type: v.type, durable: v.durable === 'true', auto_delete: v.auto_delete === 'true',
        internal: v.internal === 'true', arguments: parseArgs(v.arguments)};
      act(api('PUT', `/exchanges/${vhostPath(v.vhost)}/${encodeURIComponent(v.name)}`, body), `Exchange ${v.name} declared.`)
        .then(() => form.elements.name.value = '');
    });
    const el = h('div', null, h('h1', {text: 'Exchanges'}), list.el,
      h('details', null, h('summary', {text: 'Add an exchange'}), addForm));
    let vhostsLoaded = false;
    async function refresh() {
      await list.refresh();
      if (!vhostsLoaded) {
        vhostsLoaded = true;
        fillSelect(vhostSel, await vhostNames());
        // the types this broker has (plugins' too: x-delayed-message, x-consistent-hash, ...)
        const ov = await api('GET', '/overview').catch(() => ({}));
        if (Array.isArray(ov.exchange_types) && ov.exchange_types.length) {
          fillSelect(typeSel, ov.exchange_types.map((t) => t.name));
        }
      }
    }
    return {el, refresh};
  }

  function exchangePage(vhost, name) {
    if (name === 'amq.default') name = '';
    const base = `/exchanges/${vhostPath(vhost)}/${encodeURIComponent(exName(name))}`;
    const details = h('div', {id: 'exchange-details'});
    const bindings = h('div', {id: 'bindings'});
    const bindForm = panelForm('add-binding', [
      field('To', select('destination_type', [['q', 'Queue'], ['e', 'Exchange']], 'q')),
      field('Name', h('input', {name: 'destination', required: true})),
      field('Routing key', h('input', {name: 'routing_key'})),
      field('Arguments', h('textarea', {name: 'arguments'})),
    ], 'Bind', (v) => act(api('POST', `/bindings/${vhostPath(vhost)}/e/${encodeURIComponent(name)}/${v.destination_type}/${encodeURIComponent(v.destination)}`,
      {routing_key: v.routing_key, arguments: parseArgs(v.arguments)}), 'Binding added.'));
    const del = h('button.danger', {type: 'button', id: 'delete-exchange', text: 'Delete exchange', onclick: () => {
      if (confirm(`Delete exchange ${name}?`)) {
        act(api('DELETE', base), `Exchange ${name} deleted.`).then((r) => { if (r !== undefined) location.hash = '#/exchanges'; });
      }
    }});
    const builtin = name === '' || name.startsWith('amq.');
    const el = h('div', null,
      h('h1', null, 'Exchange ', h('span', {id: 'exchange-name', text: exLabel(name)}), ' ', h('small', {text: `in virtual host ${vhost}`})),
      details,
      name === '' ? null : [h('h2', {text: 'Bindings from this exchange'}), bindings,
        h('details', null, h('summary', {text: 'Add a binding from this exchange'}), bindForm)],
      h('h2', {text: 'Publish message'}), publishForm('publish', vhost, name),
      builtin ? null : [h('h2', {text: 'Delete'}), h('div.toolbar', null, del)]);
    async function refresh() {
      let x;
      try {
        x = await api('GET', base);
      } catch (e) {
        if (e.status === 404) { replace(details, h('p.error', {text: `Exchange ${name} does not exist (any more).`})); return; }
        throw e;
      }
      replace(details, propsList([
        ['Type', x.type], ['Durable', String(x.durable)], ['Auto delete', String(x.auto_delete)],
        ['Internal', String(x.internal)], ['Arguments', fmtJSON(x.arguments)], ['Policy', x.policy || ''],
        ['Message rate in', fmtRate(rateOf(x, 'publish_in'))], ['Message rate out', fmtRate(rateOf(x, 'publish_out'))],
      ]));
      if (name !== '') replace(bindings, bindingsTable(await api('GET', base + '/bindings/source').catch(() => []), vhost, false));
    }
    return {el, refresh};
  }

  function clientOf(c) {
    const p = c.client_properties || {};
    return [p.product, p.version].filter(Boolean).join(' ') || p.platform || '';
  }
  function connectionsPage() {
    const body = h('div', {id: 'connections'});
    const el = h('div', null, h('h1', {text: 'Connections'}), body);
    async function refresh() {
      const rows = await api('GET', '/connections');
      replace(body, table([
        {key: 'name', title: 'Name', get: (c) => c.name},
        {key: 'vhost', title: 'Virtual host', get: (c) => c.vhost},
        {key: 'user', title: 'User', get: (c) => c.user},
        {key: 'client', title: 'Client', get: clientOf},
        {key: 'connection_name', title: 'Client name', get: (c) => (c.client_properties || {}).connection_name || ''},
        {key: 'state', title: 'State', get: (c) => tag(c.state || 'running', c.state === 'blocked' || c.state === 'blocking' ? 'bad' : 'ok')},
        {key: 'tls', title: 'TLS', get: (c) => c.ssl ? '●' : '○'},
        {key: 'channels', title: 'Channels', num: true},
        {key: 'recv', title: 'From client', num: true, get: (c) => c.recv_oct_details ? fmtBytes(c.recv_oct_details.rate) + '/s' : ''},
        {key: 'send', title: 'To client', num: true, get: (c) => c.send_oct_details ? fmtBytes(c.send_oct_details.rate) + '/s' : ''},
        {key: 'close', title: '', get: (c) => h('button.danger', {type: 'button', text: 'Close', onclick: () => {
          if (confirm(`Close connection ${c.name}?`)) {
            act(api('DELETE', `/connections/${encodeURIComponent(c.name)}`, undefined,
              {'X-Reason': 'Closed via management UI'}), 'Connection closed.');
          }
        }})},
      ], rows, (c) => ({'data-name': c.name, 'data-connection-name': (c.client_properties || {}).connection_name || ''}), 'No connections.'));
    }
    return {el, refresh};
  }

  function channelsPage() {
    const body = h('div', {id: 'channels'});
    const el = h('div', null, h('h1', {text: 'Channels'}), body);
    async function refresh() {
      const rows = await api('GET', '/channels');
      replace(body, table([
        {key: 'name', title: 'Channel', get: (c) => c.name},
        {key: 'vhost', title: 'Virtual host', get: (c) => c.vhost},
        {key: 'user', title: 'User', get: (c) => c.user},
        {key: 'mode', title: 'Mode', get: (c) => [c.confirm ? tag('C', '') : null, c.transactional ? tag('T') : null]},
        {key: 'state', title: 'State', get: (c) => tag(c.state || 'running', c.state === 'flow' ? 'bad' : 'ok')},
        {key: 'consumer_count', title: 'Consumers', num: true},
        {key: 'prefetch_count', title: 'Prefetch', num: true},
        {key: 'messages_unacknowledged', title: 'Unacked', num: true},
        {key: 'messages_unconfirmed', title: 'Unconfirmed', num: true},
        {key: 'publish', title: 'Publish', num: true, get: (c) => fmtRate(rateOf(c, 'publish'))},
        {key: 'confirm', title: 'Confirm', num: true, get: (c) => fmtRate(rateOf(c, 'confirm'))},
        {key: 'deliver', title: 'Deliver / get', num: true, get: (c) => fmtRate(rateOf(c, 'deliver_get'))},
        {key: 'ack', title: 'Ack', num: true, get: (c) => fmtRate(rateOf(c, 'ack'))},
      ], rows, (c) => ({'data-name': c.name}), 'No channels.'));
    }
    return {el, refresh};
  }

  function adminPage() {
    const users = h('div', {id: 'users'});
    const vhosts = h('div', {id: 'vhosts'});
    const perms = h('div', {id: 'permissions'});
    const policies = h('div', {id: 'policies'});
    const permUser = select('user', [], '');
    const permVhost = select('vhost', [], '');
    const policyVhost = select('vhost', [], '');
    const tagsOf = (u) => Array.isArray(u.tags) ? u.tags.join(', ') : (u.tags || '');
    const addUser = panelForm('add-user', [
      field('Username', h('input', {name: 'name', required: true, autocomplete: 'off'})),
      field('Password', h('input', {name: 'password', type: 'password', autocomplete: 'new-password'})),
      field('Tags', h('input', {name: 'tags', placeholder: 'administrator, monitoring, policymaker, management'})),
    ], 'Add user', (v, form) => act(api('PUT', `/users/${encodeURIComponent(v.name)}`,
      {password: v.password, tags: v.tags.split(',').map((t) => t.trim()).filter(Boolean).join(',')}),
    `User ${v.name} added.`).then(() => form.reset()));
    const addVhost = panelForm('add-vhost', [
      field('Name', h('input', {name: 'name', required: true})),
      field('Description', h('input', {name: 'description'})),
    ], 'Add virtual host', (v, form) => act(api('PUT', `/vhosts/${encodeURIComponent(v.name)}`,
      v.description ? {description: v.description} : {}), `Virtual host ${v.name} added.`).then(() => form.reset()));
    const setPerm = panelForm('set-permission', [
      field('User', permUser), field('Virtual host', permVhost),
      field('Configure regexp', h('input', {name: 'configure', value: '.*'})),
      field('Write regexp', h('input', {name: 'write', value: '.*'})),
      field('Read regexp', h('input', {name: 'read', value: '.*'})),
    ], 'Set permission', (v) => act(api('PUT', `/permissions/${encodeURIComponent(v.vhost)}/${encodeURIComponent(v.user)}`,
      {configure: v.configure, write: v.write, read: v.read}), `Permission set for ${v.user} in ${v.vhost}.`));
    const addPolicy = panelForm('add-policy', [
      field('Virtual host', policyVhost),
      field('Name', h('input', {name: 'name', required: true})),
      field('Pattern', h('input', {name: 'pattern', required: true, placeholder: '^amq\\.'})),
      field('Apply to', select('apply-to', [['all', 'Exchanges and queues'], ['queues', 'Queues'], ['exchanges', 'Exchanges']], 'queues')),
      field('Priority', h('input', {name: 'priority', type: 'number', value: '0'})),
      field('Definition', h('textarea', {name: 'definition', placeholder: 'max-length = 1000\nmessage-ttl = 60000'})),
    ], 'Add / update policy', (v) => act(api('PUT', `/policies/${vhostPath(v.vhost)}/${encodeURIComponent(v.name)}`,
      {pattern: v.pattern, 'apply-to': v['apply-to'], priority: Number(v.priority) || 0, definition: parseArgs(v.definition)}),
    `Policy ${v.name} set.`));
    const del = (path, what) => () => { if (confirm(`Delete ${what}?`)) act(api('DELETE', path), `Deleted ${what}.`); };
    const el = h('div', null, h('h1', {text: 'Admin'}),
      h('h2', {text: 'Users'}), users, h('details', null, h('summary', {text: 'Add a user'}), addUser),
      h('h2', {text: 'Virtual hosts'}), vhosts, h('details', null, h('summary', {text: 'Add a virtual host'}), addVhost),
      h('h2', {text: 'Permissions'}), perms, h('details', null, h('summary', {text: 'Set a permission'}), setPerm),
      h('h2', {text: 'Policies'}), policies, h('details', null, h('summary', {text: 'Add or update a policy'}), addPolicy));
    const failed = (box) => (e) => {
      replace(box, h('p.error', {text: e.status === 404 ? `This broker does not offer it (${e.message}).` : e.message}));
      return null;
    };
    async function refresh() {
      const [us, vs, ps, pol] = await Promise.all([
        api('GET', '/users').catch(failed(users)), api('GET', '/vhosts').catch(failed(vhosts)),
        api('GET', '/permissions').catch(failed(perms)), api('GET', '/policies').catch(failed(policies))]);
      if (us) {
        replace(users, table([
          {key: 'name', title: 'Name', get: (u) => u.name},
          {key: 'tags', title: 'Tags', get: tagsOf},
          {key: 'password', title: 'Can log in with password', get: (u) => u.password_hash ? 'yes' : 'no'},
          {key: 'delete', title: '', get: (u) => h('button.danger', {type: 'button', text: 'Delete',
            onclick: del(`/users/${encodeURIComponent(u.name)}`, `user ${u.name}`)})},
        ], us, (u) => ({'data-name': u.name}), 'No users.'));
        fillSelect(permUser, us.map((u) => u.name));
      }
      if (vs) {
        replace(vhosts, table([
          {key: 'name', title: 'Name', get: (v) => v.name},
          {key: 'description', title: 'Description', get: (v) => v.description || ''},
          {key: 'messages_ready', title: 'Ready', num: true},
          {key: 'messages_unacknowledged', title: 'Unacked', num: true},
          {key: 'messages', title: 'Total', num: true},
          {key: 'publish', title: 'Publish', num: true, get: (v) => fmtRate(rateOf(v, 'publish'))},
          {key: 'delete', title: '', get: (v) => h('button.danger', {type: 'button', text: 'Delete',
            onclick: del(`/vhosts/${vhostPath(v.name)}`, `virtual host ${v.name}`)})},
        ], vs, (v) => ({'data-name': v.name}), 'No virtual hosts.'));
        fillSelect(permVhost, vs.map((v) => v.name));
        fillSelect(policyVhost, vs.map((v) => v.name));
      }
      if (ps) {
        replace(perms, table([
          {key: 'user', title: 'User', get: (p) => p.user},
          {key: 'vhost', title: 'Virtual host', get: (p) => p.vhost},
          {key: 'configure', title: 'Configure', get: (p) => p.configure},
          {key: 'write', title: 'Write', get: (p) => p.write},
          {key: 'read', title: 'Read', get: (p) => p.read},
          {key: 'clear', title: '', get: (p) => h('button.danger', {type: 'button', text: 'Clear',
            onclick: del(`/permissions/${vhostPath(p.vhost)}/${encodeURIComponent(p.user)}`, `permission of ${p.user} in ${p.vhost}`)})},
        ], ps, (p) => ({'data-user': p.user, 'data-vhost': p.vhost}), 'No permissions.'));
      }
      if (pol) {
        replace(policies, table([
          {key: 'vhost', title: 'Virtual host', get: (p) => p.vhost},
          {key: 'name', title: 'Name', get: (p) => p.name},
          {key: 'pattern', title: 'Pattern', get: (p) => p.pattern},
          {key: 'apply-to', title: 'Apply to', get: (p) => p['apply-to']},
          {key: 'definition', title: 'Definition', get: (p) => fmtJSON(p.definition)},
          {key: 'priority', title: 'Priority', num: true},
          {key: 'delete', title: '', get: (p) => h('button.danger', {type: 'button', text: 'Delete',
            onclick: del(`/policies/${vhostPath(p.vhost)}/${encodeURIComponent(p.name)}`, `policy ${p.name}`)})},
        ], pol, (p) => ({'data-vhost': p.vhost, 'data-name': p.name}), 'No policies.'));
      }
    }
    return {el, refresh};
  }

  // ---------------------------------------------------------------- routing and refresh
  function route() {
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter((p, i) => p !== '' || i > 0).map(decodeURIComponent);
    const [top, a, b] = parts;
    let page, nav = top || 'overview';
    if (!top || top === 'overview') page = overviewPage();
    else if (top === 'queues' && a !== undefined && b !== undefined) page = queuePage(a, b);
    else if (top === 'queues') page = queuesPage();
    else if (top === 'exchanges' && a !== undefined && b !== undefined) page = exchangePage(a, b);
    else if (top === 'exchanges') page = exchangesPage();
    else if (top === 'connections') page = connectionsPage();
    else if (top === 'channels') page = channelsPage();
    else if (top === 'admin') page = adminPage();
    else { page = overviewPage(); nav = 'overview'; }
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === nav);
    generation++;
    current = page;
    delete main.dataset.loaded;
    main.dataset.page = nav;
    replace(main, page.el);
    refreshNow();
  }
  async function refreshNow() {
    if (!current || !sessionStorage.getItem(AUTH_KEY)) return;
    const page = current, gen = generation;
    refreshing = true;
    try {
      await page.refresh();
      if (gen === generation) main.dataset.loaded = String(Date.now());   // tests wait on this
    } catch (e) {
      if (gen === generation && !(e instanceof ApiError && e.status === 401)) flash(e.message || String(e), true);
    } finally {
      refreshing = false;
    }
  }
  function startTimer() {
    clearInterval(timer);
    const every = Number($('refresh').value);
    if (every > 0) timer = setInterval(() => { if (!refreshing && !document.hidden) refreshNow(); }, every);
  }

  // ---------------------------------------------------------------- login
  function showLogin(message) {
    sessionStorage.removeItem(AUTH_KEY);
    clearInterval(timer);
    current = null;
    main.replaceChildren();
    $('session').hidden = true;
    $('nav').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('login-username').focus();
  }
  async function startSession() {
    const me = await api('GET', '/whoami');
    const tags = Array.isArray(me.tags) ? me.tags.join(', ') : (me.tags || '');
    $('whoami').textContent = `${me.name}${tags ? ' (' + tags + ')' : ''}`;
    $('login').hidden = true;
    $('nav').hidden = false;
    $('session').hidden = false;
    startTimer();
    route();
  }
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const user = $('login-username').value, pass = $('login-password').value;
    // btoa takes Latin-1 only: encode UTF-8 first so any username/password works
    sessionStorage.setItem(AUTH_KEY, btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${pass}`))));
    sessionStorage.setItem(USER_KEY, user);
    try {
      await startSession();
      $('login-password').value = '';
    } catch (e) {
      showLogin(e.status === 401 ? 'Login failed: wrong username or password, or a user without management tags.' : e.message);
    }
  });
  $('logout').addEventListener('click', () => { showLogin(''); });
  const savedRefresh = sessionStorage.getItem(REFRESH_KEY);
  if (savedRefresh !== null) $('refresh').value = savedRefresh;
  $('refresh').addEventListener('change', () => { sessionStorage.setItem(REFRESH_KEY, $('refresh').value); startTimer(); });
  window.addEventListener('hashchange', () => { if (sessionStorage.getItem(AUTH_KEY)) route(); });

  if (sessionStorage.getItem(AUTH_KEY)) startSession().catch(() => showLogin('')); else showLogin('');
})();
