// pipewatch dashboard. Served by pipewatch itself; reads only its JSON API.
//
// Rules this file keeps:
// - Everything from the API (pipeline and stage names, summaries, metric names) reaches the
//   DOM as text: textContent, createElement, setAttribute. Nothing is ever parsed as HTML
//   (no HTML sinks); the page's Content-Security-Policy (Trusted Types) would throw if it
//   tried.
// - Live without reloading: /api/v1/stream (server-sent events) says when the state
//   changed; the page then refetches what it shows, one refresh at a time.
// - Bounded at any number of stages: the server filters, sorts and caps the stage list
//   (?q, ?health, ?pipeline, ?limit), so the table holds at most `state.limit` rows and
//   the pipeline overview at most MAX_PIPELINES buttons.
'use strict';

/** Rows per page of the stage table, and the most it grows to with "show more". */
const PAGE = 200;
const MAX_ROWS = 2000;
/** Pipeline buttons shown at most; the rest are reached with the filter. */
const MAX_PIPELINES = 60;
/** Alerts listed at most. */
const MAX_ALERTS = 100;
/** Least time between two refreshes while changes stream in (a fast replay). */
const MIN_REFRESH_GAP_MS = 700;
/** Without server-sent events (or while they are down), poll this often. */
const POLL_MS = 5000;

const HEALTH = {
  silent: 'silent',
  anomalous: 'anomalous',
  warming_up: 'warming up',
  ok: 'ok',
};
/** Metrics every stage has, in the order people read them; quality figures follow. */
const METRIC_ORDER = ['events', 'records', 'bytes', 'error_rate', 'failure_rate',
  'rejected_rate', 'duration_p95'];

const state = {
  q: '',
  health: '',
  pipeline: '',
  limit: PAGE,
  alerts: 'active', // or 'recent'
  open: null, // {pipeline, stage}: the stage whose charts are shown
  run: null, // the correlation id whose run is shown
  runAlert: null, // {kind, pipeline, stage}: the alert the run was opened from
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small DOM helpers

/** An element with a class and text content (both optional). */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function healthBadge(health) {
  const known = Object.prototype.hasOwnProperty.call(HEALTH, health);
  return el('span', 'health ' + (known ? 'health-' + health : 'health-unknown'),
    known ? HEALTH[health] : String(health));
}

const numberFormat = new Intl.NumberFormat('en', { maximumSignificantDigits: 4 });
const compactFormat = new Intl.NumberFormat('en', { notation: 'compact', maximumSignificantDigits: 3 });
const scoreFormat = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });
const percentFormat = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });
const countFormat = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });

function fmt(x) {
  return typeof x === 'number' && Number.isFinite(x) ? numberFormat.format(x) : '–';
}

/** Short, for axis labels: 1.57M. */
function fmtCompact(x) {
  return typeof x === 'number' && Number.isFinite(x) ? compactFormat.format(x) : '–';
}

/** "1 alert", "3 alerts". */
function count(n, noun) {
  return numberFormat.format(n) + ' ' + noun + (n === 1 ? '' : 's');
}

/** Records, exactly: a run's counts are compared to the record. */
function fmtCount(x) {
  return typeof x === 'number' && Number.isFinite(x) ? countFormat.format(x) : '–';
}

function fmtScore(x) {
  return typeof x === 'number' && Number.isFinite(x) ? scoreFormat.format(x) : '–';
}

/** "11-02 07:06" (UTC) from an RFC 3339 time. */
function shortTime(iso) {
  const t = Date.parse(iso);
  return Number.isFinite(t) ? new Date(t).toISOString().slice(5, 16).replace('T', ' ') : '–';
}

function fullTime(iso) {
  const t = Date.parse(iso);
  return Number.isFinite(t) ? new Date(t).toISOString().replace('.000Z', 'Z') : '–';
}

/** The page that shows one stage: the same link alerts carry. */
function stageHref(pipeline, stage) {
  return '/stages/' + encodeURIComponent(pipeline) + '/' + encodeURIComponent(stage);
}

function stageApi(pipeline, stage) {
  return '/api/v1/stages/' + encodeURIComponent(pipeline) + '/' + encodeURIComponent(stage);
}

/** A link that opens a stage in place (and still works as a link: new tab, copy). */
function stageLink(pipeline, stage, className) {
  const a = el('a', className, pipeline + ' / ' + stage);
  a.href = stageHref(pipeline, stage);
  a.addEventListener('click', (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    openStage(pipeline, stage);
  });
  return a;
}

// ---------------------------------------------------------------- fetching

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GETs JSON; also returns the raw text, so an unchanged answer can skip re-rendering. */
async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (_) {
    // Left null: reported below when the status is not OK, refused when it is.
  }
  if (!response.ok) {
    throw new HttpError(response.status, (body && body.error) || response.statusText);
  }
  if (body === null) throw new HttpError(response.status, 'not JSON');
  return { body, text };
}

function stagesUrl() {
  const params = new URLSearchParams();
  if (state.q) params.set('q', state.q);
  if (state.health) params.set('health', state.health);
  if (state.pipeline) params.set('pipeline', state.pipeline);
  params.set('limit', String(state.limit));
  return '/api/v1/stages?' + params.toString();
}

// ---------------------------------------------------------------- refresh loop

let refreshing = false;
let refreshAgain = false;
let lastRefreshStart = 0;
const lastText = { overview: null, stages: null, alerts: null, detail: null, run: null };
const lastUpdate = { at: null, overview: null, alerts: null };

/** Refetches what the page shows. Calls during a refresh coalesce into one more after it. */
function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  refreshAgain = false;
  lastRefreshStart = performance.now();
  Promise.allSettled([loadOverview(), loadStages(), loadAlerts(), loadDetail(), loadRun()]).then((results) => {
    const failed = results.find((r) => r.status === 'rejected');
    showNotice(failed ? 'Cannot reach pipewatch (' + failed.reason.message + '); retrying.' : '');
    if (!failed) lastUpdate.at = new Date();
    renderSummary();
    refreshing = false;
    if (refreshAgain) {
      const wait = Math.max(0, MIN_REFRESH_GAP_MS - (performance.now() - lastRefreshStart));
      setTimeout(refresh, wait);
    }
  });
}

function showNotice(text) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = !text;
}

// Live updates: the stream says "changed"; polling stands in while it is down.
let pollTimer = null;

function setLive(mode) {
  const live = $('live');
  live.dataset.state = mode;
  live.textContent = { live: 'live', connecting: 'connecting', reconnecting: 'reconnecting', polling: 'polling' }[mode];
  if (mode === 'live') {
    clearInterval(pollTimer);
    pollTimer = null;
  } else if (pollTimer === null) {
    pollTimer = setInterval(refresh, POLL_MS);
  }
}

function connect() {
  if (typeof EventSource === 'undefined') {
    setLive('polling');
    return;
  }
  const source = new EventSource('/api/v1/stream');
  source.addEventListener('open', () => setLive('live'));
  source.addEventListener('change', () => {
    setLive('live');
    refresh();
  });
  // EventSource reconnects by itself (after the `retry` the server set).
  source.addEventListener('error', () => setLive('reconnecting'));
}

// ---------------------------------------------------------------- header and overview

function renderSummary() {
  const parts = [];
  const o = lastUpdate.overview;
  if (o) {
    const c = o.stages;
    const total = c.silent + c.anomalous + c.warming_up + c.ok;
    parts.push(count(total, 'stage') + ' in ' + count(o.total, 'pipeline'));
    if (c.silent) parts.push(c.silent + ' silent');
    if (c.anomalous) parts.push(c.anomalous + ' anomalous');
  }
  if (lastUpdate.alerts !== null) parts.push(count(lastUpdate.alerts, 'alert') + ' firing');
  if (lastUpdate.at) parts.push('updated ' + lastUpdate.at.toLocaleTimeString());
  $('summary').textContent = parts.join(' · ');
}

async function loadOverview() {
  const { body, text } = await getJson('/api/v1/pipelines?limit=' + MAX_ROWS);
  lastUpdate.overview = body;
  if (text === lastText.overview) return;
  lastText.overview = text;
  renderOverview();
}

function renderOverview() {
  const o = lastUpdate.overview;
  if (!o) return;
  const c = o.stages;
  const counts = { '': c.silent + c.anomalous + c.warming_up + c.ok, ...c };
  for (const button of $('health-filter').querySelectorAll('button')) {
    const h = button.dataset.health;
    button.querySelector('.count').textContent = numberFormat.format(counts[h] || 0);
    button.setAttribute('aria-pressed', String(h === state.health));
  }
  // Pipelines, worst first (the server's order); the filter text narrows them too.
  const needle = state.q.toLowerCase();
  const matching = o.pipelines.filter((p) => !needle || (p.pipeline + '/').toLowerCase().includes(needle)
    || needle.startsWith(p.pipeline.toLowerCase() + '/') || p.pipeline === state.pipeline);
  const frag = document.createDocumentFragment();
  for (const p of matching.slice(0, MAX_PIPELINES)) frag.appendChild(pipelineButton(p));
  const hidden = matching.length - Math.min(matching.length, MAX_PIPELINES) + (o.total - o.pipelines.length);
  if (hidden > 0) {
    frag.appendChild(el('span', 'more', '+' + numberFormat.format(hidden) + ' more pipelines: filter to find them'));
  }
  $('pipelines').replaceChildren(frag);
}

function pipelineButton(p) {
  const known = Object.prototype.hasOwnProperty.call(HEALTH, p.health);
  const button = el('button', known ? 'health-' + p.health : '');
  button.type = 'button';
  button.dataset.pipeline = p.pipeline;
  button.setAttribute('aria-pressed', String(p.pipeline === state.pipeline));
  button.appendChild(el('span', 'name', p.pipeline));
  const counts = [];
  for (const h of ['silent', 'anomalous', 'warming_up']) {
    if (p.counts[h]) counts.push(p.counts[h] + ' ' + HEALTH[h]);
  }
  counts.push(p.counts.ok + '/' + p.stages + ' ok');
  button.appendChild(el('span', 'count', counts.join(', ')));
  button.title = p.pipeline + ': ' + (known ? HEALTH[p.health] : p.health)
    + '. Show only its stages (click again for all).';
  button.addEventListener('click', () => {
    state.pipeline = state.pipeline === p.pipeline ? '' : p.pipeline;
    state.limit = PAGE;
    renderOverview();
    refresh();
  });
  return button;
}

// ---------------------------------------------------------------- stage table

let stagesSeq = 0;

async function loadStages() {
  const seq = ++stagesSeq;
  const { body, text } = await getJson(stagesUrl());
  // A newer request (the filter changed meanwhile) wins.
  if (seq !== stagesSeq || text === lastText.stages) return;
  lastText.stages = text;
  renderStages(body);
}

/** The metric whose latest bucket is furthest from expected (largest |score|). */
function mostUnusual(metrics) {
  let best = null;
  for (const [name, point] of Object.entries(metrics || {})) {
    if (!point || typeof point.score !== 'number') continue;
    if (best === null || Math.abs(point.score) > Math.abs(best.point.score)) best = { name, point };
  }
  return best;
}

function stageRow(s) {
  const tr = el('tr');
  tr.dataset.pipeline = s.pipeline;
  tr.dataset.stage = s.stage;
  tr.dataset.health = s.health;
  if (state.open && state.open.pipeline === s.pipeline && state.open.stage === s.stage) {
    tr.className = 'selected';
  }
  const health = el('td', 'health-cell');
  health.appendChild(healthBadge(s.health));
  tr.appendChild(health);
  tr.appendChild(el('td', 'pipeline', s.pipeline));
  const stage = el('td', 'stage');
  const link = el('a', 'stage-link', s.stage);
  link.href = stageHref(s.pipeline, s.stage);
  stage.appendChild(link);
  tr.appendChild(stage);
  tr.appendChild(el('td', 'num', s.firing ? s.firing : ''));
  const worst = mostUnusual(s.metrics);
  tr.appendChild(el('td', 'metric', worst
    ? worst.name + ' ' + fmt(worst.point.value) + ' (expected ' + fmt(worst.point.expected)
      + ', score ' + fmtScore(worst.point.score) + ')'
    : ''));
  tr.appendChild(el('td', 'when', shortTime(s.last_bucket_end)));
  return tr;
}

function renderStages(body) {
  const started = performance.now();
  const table = $('stages');
  const frag = document.createDocumentFragment();
  for (const s of body.stages) frag.appendChild(stageRow(s));
  if (body.stages.length === 0) {
    const tr = el('tr', 'empty');
    const td = el('td', '', body.total ? 'No stage matches the filter.' : 'No stages yet: pipewatch shows a stage once one of its buckets has closed.');
    td.colSpan = 6;
    tr.appendChild(td);
    frag.appendChild(tr);
  }
  table.tBodies[0].replaceChildren(frag);
  // Reading a layout property makes the browser lay out now, so the time includes it.
  void table.offsetHeight;
  table.dataset.renderMs = (performance.now() - started).toFixed(1);
  table.dataset.rows = String(body.stages.length);

  const shown = body.stages.length;
  let text = 'Showing ' + numberFormat.format(shown) + ' of ' + numberFormat.format(body.matched)
    + ' matching stages';
  if (body.matched !== body.total) text += ' (' + numberFormat.format(body.total) + ' in all)';
  if (body.matched > shown) text += '; filter to narrow them down';
  $('stages-footer').textContent = text + '.';
  const more = $('more');
  more.hidden = !(body.matched > shown && state.limit < MAX_ROWS);
}

// ---------------------------------------------------------------- alerts

async function loadAlerts() {
  const [active, recent] = await Promise.all([
    getJson('/api/v1/alerts'),
    state.alerts === 'recent' ? getJson('/api/v1/alerts?state=recent') : Promise.resolve(null),
  ]);
  lastUpdate.alerts = active.body.alerts.length;
  const shown = state.alerts === 'recent' ? recent : active;
  const key = state.alerts + shown.text;
  if (key === lastText.alerts) return;
  lastText.alerts = key;
  renderAlerts($('alerts'), shown.body.alerts, MAX_ALERTS);
  const more = shown.body.alerts.length - Math.min(shown.body.alerts.length, MAX_ALERTS);
  const none = state.alerts === 'recent' ? 'No notifications yet.' : 'No alert is firing.';
  $('alerts-footer').textContent = shown.body.alerts.length === 0 ? none
    : more > 0 ? numberFormat.format(more) + ' more not listed.' : '';
}

function alertItem(a) {
  const severity = a.severity === 'critical' ? 'critical' : 'warning';
  const li = el('li', 'severity-' + severity + (a.status === 'resolved' ? ' status-resolved' : ''));
  li.dataset.fingerprint = a.fingerprint;
  const line1 = el('div', 'line1');
  line1.appendChild(el('span', 'severity', a.status === 'resolved' ? 'resolved' : severity));
  line1.appendChild(el('span', 'kind', a.kind));
  line1.appendChild(stageLink(a.pipeline, a.stage, 'stage-link'));
  line1.appendChild(el('span', 'meta', a.metric));
  li.appendChild(line1);
  li.appendChild(el('div', 'summary-text', a.summary));
  const meta = ['since ' + fullTime(a.startsAt)];
  if (a.status === 'resolved' && a.endsAt) meta.push('ended ' + fullTime(a.endsAt));
  meta.push('value ' + fmt(a.value) + ', expected ' + fmt(a.expected) + ', band ' + fmt(a.lower) + '–' + fmt(a.upper));
  if (a.annotations && a.annotations.silenced_by) meta.push('email silenced by ' + a.annotations.silenced_by);
  li.appendChild(el('div', 'meta', meta.join(' · ')));
  const runs = alertRuns(a);
  if (runs) li.appendChild(runs);
  return li;
}

function renderAlerts(list, alerts, max) {
  const frag = document.createDocumentFragment();
  for (const a of alerts.slice(0, max)) frag.appendChild(alertItem(a));
  list.replaceChildren(frag);
}

// ---------------------------------------------------------------- one stage

/** Opens a stage's charts, and puts its link in the address bar unless it came from there. */
function openStage(pipeline, stage, fromAddress) {
  const wasOpen = state.open !== null;
  state.open = { pipeline, stage };
  if (!fromAddress) syncAddress();
  lastText.detail = null;
  $('detail').hidden = false;
  $('side').classList.add('stage-open');
  // In a one-column layout the charts sit below the table: bring them into view.
  if (!fromAddress && !wasOpen) $('detail').scrollIntoView({ block: 'nearest' });
  $('detail-pipeline').textContent = pipeline;
  $('detail-stage').textContent = stage;
  for (const tr of $('stages').tBodies[0].rows) {
    tr.classList.toggle('selected', tr.dataset.pipeline === pipeline && tr.dataset.stage === stage);
  }
  refresh();
}

function closeStage(fromAddress) {
  state.open = null;
  if (!fromAddress) syncAddress();
  $('detail').hidden = true;
  $('side').classList.remove('stage-open');
  for (const tr of $('stages').tBodies[0].querySelectorAll('tr.selected')) tr.classList.remove('selected');
}

/** The stage a path such as /stages/orders/load names, if any. */
function stageFromPath(path) {
  const parts = path.split('/');
  if (parts.length !== 4 || parts[1] !== 'stages' || !parts[2] || !parts[3]) return null;
  try {
    return { pipeline: decodeURIComponent(parts[2]), stage: decodeURIComponent(parts[3]) };
  } catch (_) {
    return null;
  }
}

async function loadDetail() {
  const open = state.open;
  if (!open) return;
  let answer;
  try {
    answer = await getJson(stageApi(open.pipeline, open.stage));
  } catch (err) {
    if (!(err instanceof HttpError) || err.status !== 404) throw err;
    if (state.open !== open) return;
    lastText.detail = null;
    $('detail-health').replaceChildren();
    $('detail-meta').textContent = 'This stage is not on this instance: unknown, forgotten after '
      + 'a long silence, or judged by another instance of the consumer group.';
    $('detail-alerts').replaceChildren();
    $('charts').replaceChildren();
    return;
  }
  if (state.open !== open || answer.text === lastText.detail) return;
  lastText.detail = answer.text;
  renderDetail(answer.body);
}

function renderDetail(d) {
  $('detail-health').replaceChildren(healthBadge(d.health));
  const names = Object.keys(d.metrics).sort((a, b) => metricRank(a) - metricRank(b) || (a < b ? -1 : a > b ? 1 : 0));
  const buckets = names.length ? d.metrics[names[0]].length : 0;
  $('detail-meta').textContent = 'Last bucket ended ' + fullTime(d.last_bucket_end) + ' · '
    + count(buckets, 'bucket') + ' shown per metric · ' + count(d.alerts.length, 'alert') + ' firing';
  renderAlerts($('detail-alerts'), d.alerts, MAX_ALERTS);
  const frag = document.createDocumentFragment();
  for (const name of names) frag.appendChild(chart(name, d.metrics[name]));
  $('charts').replaceChildren(frag);
}

function metricRank(name) {
  const i = METRIC_ORDER.indexOf(name);
  return i >= 0 ? i : METRIC_ORDER.length;
}

// ---------------------------------------------------------------- one run

/**
 * Alert kinds about one run rather than a bucket of them: their correlation ids name the
 * run the alert is about. Other alerts carry the ids seen in their bucket.
 */
const RUN_KINDS = ['data_loss', 'stuck_run', 'failed_run'];
/** Correlation ids offered per alert; the alert schema bounds the list anyway. */
const MAX_RUN_LINKS = 5;
const STATUSES = ['success', 'failure', 'retry', 'skipped'];
const TRACE = { width: 600, label: 122, right: 96, top: 22, row: 28, bar: 14 };

/** A link that opens a run's trace in place (and still works as a link). */
function runLink(id, alert) {
  const a = el('a', 'run-link', id);
  a.href = '/?run=' + encodeURIComponent(id);
  a.dataset.correlationId = id;
  a.title = 'Show this run as a timeline';
  a.addEventListener('click', (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    openRun(id, alert);
  });
  return a;
}

/** The runs an alert names, as links; null when it carries no correlation id. */
function alertRuns(a) {
  const ids = (Array.isArray(a.correlation_ids) ? a.correlation_ids : [])
    .filter((id) => typeof id === 'string' && id !== '');
  if (!ids.length) return null;
  const div = el('div', 'runs');
  div.appendChild(el('span', 'meta', RUN_KINDS.includes(a.kind) ? 'run' : 'runs in the bucket'));
  for (const id of ids.slice(0, MAX_RUN_LINKS)) div.appendChild(runLink(id, a));
  if (ids.length > MAX_RUN_LINKS) div.appendChild(el('span', 'meta', '+' + (ids.length - MAX_RUN_LINKS) + ' more'));
  return div;
}

/** The address of what the page shows: the open stage's path, the open run as ?run=. */
function pageHref() {
  const path = state.open ? stageHref(state.open.pipeline, state.open.stage) : '/';
  return state.run === null ? path : path + '?run=' + encodeURIComponent(state.run);
}

/** Puts what the page shows in the address bar, as a new history entry. */
function syncAddress() {
  const href = pageHref();
  if (location.pathname + location.search !== href) history.pushState(null, '', href);
}

/** The run a ?run= in the address names, if any. */
function runFromLocation() {
  const id = new URLSearchParams(location.search).get('run');
  return id ? id : null;
}

/** Opens a run's trace; `alert`, if given, is the alert it was opened from. */
function openRun(id, alert, fromAddress) {
  const wasOpen = state.run !== null;
  state.run = id;
  state.runAlert = alert ? { kind: alert.kind, pipeline: alert.pipeline, stage: alert.stage } : null;
  lastText.run = null;
  $('run').hidden = false;
  $('run-id').textContent = id;
  const from = $('run-from');
  from.textContent = alert ? 'Opened from the ' + alert.kind + ' alert on ' + alert.pipeline + ' / ' + alert.stage : '';
  from.hidden = !alert;
  $('run-body').replaceChildren(el('p', 'meta', 'Loading…'));
  if (!fromAddress) syncAddress();
  if (!fromAddress && !wasOpen) $('run').scrollIntoView({ block: 'nearest' });
  refresh();
}

function closeRun(fromAddress) {
  state.run = null;
  state.runAlert = null;
  lastText.run = null;
  $('run').hidden = true;
  $('run-body').replaceChildren();
  if (!fromAddress) syncAddress();
}

async function loadRun() {
  const id = state.run;
  if (id === null) return;
  let answer;
  try {
    answer = await getJson('/api/v1/runs/' + encodeURIComponent(id));
  } catch (err) {
    if (!(err instanceof HttpError) || err.status !== 404) throw err;
    if (state.run !== id || lastText.run === 'missing') return;
    lastText.run = 'missing';
    renderRunMissing(id, err.message);
    return;
  }
  if (state.run !== id || answer.text === lastText.run) return;
  const runs = Array.isArray(answer.body.runs) ? answer.body.runs : [];
  // Each pipeline's lineage tells which stages the run has not reached; without it (the
  // graph may be unknown on this instance) the trace shows what did report.
  const graphs = await Promise.all(runs.map((r) => getJson('/api/v1/pipelines/'
    + encodeURIComponent(r.pipeline) + '/graph').then((g) => g.body, () => null)));
  if (state.run !== id) return;
  lastText.run = answer.text;
  const frag = document.createDocumentFragment();
  runs.forEach((run, i) => frag.appendChild(runTrace(run, graphs[i])));
  $('run-body').replaceChildren(frag);
}

function renderRunMissing(id, message) {
  const box = el('div', 'run-missing');
  box.appendChild(el('p', 'run-missing-title', 'No run with correlation id ' + id + ' on this instance.'));
  box.appendChild(el('p', 'meta', 'pipewatch forgets a run flow.run_ttl (event time) after its last '
    + 'event, or sooner when it follows more than flow.max_runs runs; an instance of a consumer '
    + 'group sees only the runs of its partitions. The server says: ' + message));
  $('run-body').replaceChildren(box);
}

/** "850 ms", "2.4 s", "3 min 5 s", "2 h 10 min". */
function fmtMs(ms) {
  if (!finite(ms)) return '–';
  const sign = ms < 0 ? '−' : '';
  const a = Math.abs(ms);
  if (a < 1000) return sign + Math.round(a) + ' ms';
  if (a < 60000) return sign + (a < 10000 ? (a / 1000).toFixed(1) : Math.round(a / 1000)) + ' s';
  const s = Math.round(a / 1000);
  if (s < 3600) return sign + Math.floor(s / 60) + ' min' + (s % 60 ? ' ' + (s % 60) + ' s' : '');
  const m = Math.round(s / 60);
  return sign + Math.floor(m / 60) + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
}

/** A tick step for `span` ms that gives about `ticks` ticks: 1, 2 or 5 times a power of ten. */
function tickStep(span, ticks) {
  const raw = Math.max(span, 1) / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

/**
 * What a run's figures say: per stage, the records its upstream stages wrote into it
 * (`fed`) and how many fewer it read (`lost`, negative when it read more); and the stages
 * the lineage puts downstream of the run that have not reported it (`missing`), with the
 * stages it stopped after (`stopped`).
 */
function analyseRun(run, graph) {
  const stages = (Array.isArray(run.stages) ? run.stages : []).map((s) => {
    const hops = Array.isArray(s.hops) ? s.hops : [];
    const fed = hops.length && hops.every((h) => finite(h.records_out))
      ? hops.reduce((sum, h) => sum + h.records_out, 0) : null;
    const lost = fed !== null && finite(s.records_in) ? fed - s.records_in : null;
    return { ...s, hops, t0: Date.parse(s.start), t1: Date.parse(s.end), fed, lost };
  });
  const seen = new Set(stages.map((s) => s.stage));
  let missing = [];
  let stopped = [];
  if (graph && Array.isArray(graph.edges) && Array.isArray(graph.stages)) {
    const reached = new Set(seen);
    const queue = [...seen];
    while (queue.length) {
      const from = queue.shift();
      for (const e of graph.edges) {
        if (e.from === from && !reached.has(e.to)) {
          reached.add(e.to);
          queue.push(e.to);
        }
      }
    }
    missing = graph.stages.filter((name) => reached.has(name) && !seen.has(name));
    stopped = stages.filter((s) => graph.edges.some((e) => e.from === s.stage && missing.includes(e.to)))
      .map((s) => s.stage);
  }
  return { pipeline: run.pipeline, stages, missing, stopped };
}

/** The findings a data engineer reads first, as sentences. */
function runFindings(analysis) {
  const out = [];
  for (const s of analysis.stages) {
    const from = s.hops.map((h) => h.from).join(', ');
    if (s.lost > 0) {
      out.push(['loss', 'Records lost at ' + s.stage + ': it read ' + fmtCount(s.records_in) + ' of the '
        + fmtCount(s.fed) + ' that ' + from + ' wrote; ' + fmtCount(s.lost) + ' lost ('
        + percentFormat.format((100 * s.lost) / s.fed) + '%).']);
    } else if (s.lost < 0) {
      out.push(['extra', s.stage + ' read ' + fmtCount(-s.lost) + ' more records than ' + from + ' wrote.']);
    }
    if (s.status === 'failure') out.push(['failure', s.stage + ' failed.']);
  }
  if (analysis.missing.length) {
    out.push(['stopped', 'Stopped after ' + analysis.stopped.join(', ') + ': no event yet from '
      + analysis.missing.join(', ') + '.']);
  }
  if (!out.length) out.push(['ok', 'No records lost between the stages that reported, and none failed.']);
  return out;
}

/** One run: its findings, a timeline of its stages and their figures as a table. */
function runTrace(run, graph) {
  const analysis = analyseRun(run, graph);
  const box = el('article', 'run-trace');
  box.dataset.pipeline = run.pipeline;
  const head = el('h3');
  head.appendChild(el('span', 'run-pipeline', run.pipeline));
  head.appendChild(el('span', 'meta', 'started ' + fullTime(run.start) + ' · '
    + count(analysis.stages.length, 'stage') + ' reported · end to end ' + fmtMs(run.e2e_ms)));
  box.appendChild(head);
  const findings = el('ul', 'run-findings');
  for (const [kind, text] of runFindings(analysis)) {
    const li = el('li', 'finding finding-' + kind, text);
    li.dataset.kind = kind;
    findings.appendChild(li);
  }
  box.appendChild(findings);
  box.appendChild(runTimeline(analysis));
  box.appendChild(runTable(analysis));
  return box;
}

/** How a stage's row is marked: records lost, failed, or where the run stopped. */
function rowMark(s, analysis) {
  if (s.lost > 0) return 'loss';
  if (s.status === 'failure') return 'failed';
  if (analysis.stopped.includes(s.stage)) return 'stopped';
  return '';
}

/** The run as a timeline: a bar per stage on one time axis, hops drawn between them. */
function runTimeline(analysis) {
  const { width: W, label: L, right: R, top: T, row: RH, bar: BH } = TRACE;
  const { stages, missing } = analysis;
  const rows = stages.length + missing.length;
  const H = T + rows * RH + 6;
  const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'timeline', role: 'img' });
  root.setAttribute('aria-label', 'Timeline of the run: ' + count(stages.length, 'stage'));
  const times = stages.flatMap((s) => [s.t0, s.t1]).filter(Number.isFinite);
  const t0 = times.length ? Math.min(...times) : 0;
  const span = times.length ? Math.max(Math.max(...times) - t0, 1) : 1;
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const rowTop = (i) => T + i * RH;
  const barTop = (i) => rowTop(i) + (RH - BH) / 2;

  // The axis: time since the run's first stage started.
  const step = tickStep(span, 5);
  for (let t = 0; t <= span + 1e-9; t += step) {
    svg('line', { class: 'grid', x1: x(t0 + t), y1: T - 4, x2: x(t0 + t), y2: H - 4 }, root);
    svg('text', { class: 'tick', x: x(t0 + t), y: T - 8, 'text-anchor': 'middle' }, root)
      .textContent = t === 0 ? '0' : '+' + fmtMs(t);
  }

  const index = new Map(stages.map((s, i) => [s.stage, i]));
  stages.forEach((s, i) => {
    const mark = rowMark(s, analysis);
    const g = svg('g', { class: 'run-stage' + (mark ? ' row-' + mark : '') }, root);
    g.dataset.stage = s.stage;
    g.dataset.status = s.status;
    if (s.lost !== null) g.dataset.lost = String(s.lost);
    if (mark) svg('rect', { class: 'row-band', x: 0, y: rowTop(i), width: W, height: RH }, g);
    const name = svg('text', { class: 'stage-name', x: L - 8, y: rowTop(i) + RH / 2 + 4, 'text-anchor': 'end' }, g);
    name.textContent = s.stage.length > 18 ? s.stage.slice(0, 17) + '…' : s.stage;
    svg('title', {}, name).textContent = s.stage;
    if (!Number.isFinite(s.t0) || !Number.isFinite(s.t1)) return;
    const status = STATUSES.includes(s.status) ? s.status : 'unknown';
    const xa = x(s.t0);
    const bar = svg('rect', {
      class: 'bar status-' + status, x: xa.toFixed(1), y: barTop(i), rx: 2,
      width: Math.max(2, x(s.t1) - xa).toFixed(1), height: BH,
    }, g);
    svg('title', {}, bar).textContent = s.stage + ': ' + s.status + ', ' + fullTime(s.start) + ' to '
      + fullTime(s.end) + ' (' + fmtMs(s.duration_ms) + '); records in ' + fmtCount(s.records_in)
      + ', out ' + fmtCount(s.records_out) + ', rejected ' + fmtCount(s.records_rejected);
    const note = mark === 'loss' ? fmtCount(s.lost) + ' lost'
      : mark === 'failed' ? 'failed'
        : mark === 'stopped' ? 'stopped here'
          : finite(s.records_out) ? fmtCompact(s.records_out) + ' out' : '';
    svg('text', { class: 'note' + (mark ? ' note-' + mark : ''), x: (x(s.t1) + 5).toFixed(1), y: rowTop(i) + RH / 2 + 4 }, g)
      .textContent = note;
  });

  // Hops: from the end of each upstream stage down to this stage's start, with the delay.
  stages.forEach((s, i) => {
    for (const h of s.hops) {
      const j = index.get(h.from);
      if (j === undefined || !Number.isFinite(stages[j].t1) || !Number.isFinite(s.t0)) continue;
      const x1 = x(stages[j].t1);
      const x2 = x(s.t0);
      const y1 = barTop(j) + BH;
      const y2 = rowTop(i) + RH / 2;
      const hop = svg('path', { class: 'hop', d: 'M' + x1.toFixed(1) + ',' + y1.toFixed(1) + 'V' + y2.toFixed(1) + 'H' + x2.toFixed(1) }, root);
      hop.dataset.from = h.from;
      hop.dataset.to = s.stage;
      svg('title', {}, hop).textContent = h.from + ' → ' + s.stage + ': ' + fmtMs(h.delay_ms) + ' from its end to this start';
      if (Math.abs(x2 - x1) >= 30) {
        svg('text', { class: 'hop-delay', x: ((x1 + x2) / 2).toFixed(1), y: (y2 - 3).toFixed(1), 'text-anchor': 'middle' }, root)
          .textContent = fmtMs(h.delay_ms);
      }
    }
  });

  // Stages the lineage expects and the run has not reached: waiting, past the run's end.
  const end = times.length ? Math.max(...times) : t0;
  missing.forEach((name, k) => {
    const i = stages.length + k;
    const g = svg('g', { class: 'run-stage missing' }, root);
    g.dataset.stage = name;
    const label = svg('text', { class: 'stage-name', x: L - 8, y: rowTop(i) + RH / 2 + 4, 'text-anchor': 'end' }, g);
    label.textContent = name.length > 18 ? name.slice(0, 17) + '…' : name;
    svg('title', {}, label).textContent = name;
    const xa = x(end);
    svg('rect', { class: 'waiting', x: xa.toFixed(1), y: barTop(i), width: Math.max(2, W - 4 - xa).toFixed(1), height: BH, rx: 2 }, g);
    svg('text', { class: 'note note-missing', x: L + 6, y: rowTop(i) + RH / 2 + 4 }, g)
      .textContent = 'no event from this run';
  });
  return root;
}

/** The figures behind the timeline, exactly. */
function runTable(analysis) {
  const table = el('table', 'run-stages');
  const head = el('tr');
  for (const [text, num] of [['Stage'], ['Status'], ['Start', 1], ['Took', 1], ['In', 1], ['Out', 1],
    ['Rejected', 1], ['From'], ['Lost', 1]]) {
    head.appendChild(el('th', num ? 'num' : '', text));
  }
  table.appendChild(el('thead')).appendChild(head);
  const body = table.appendChild(el('tbody'));
  const t0 = Math.min(...analysis.stages.map((s) => s.t0).filter(Number.isFinite));
  const alert = state.runAlert;
  for (const s of analysis.stages) {
    const mark = rowMark(s, analysis);
    const tr = el('tr', mark ? 'row-' + mark : '');
    tr.dataset.stage = s.stage;
    const name = el('td', 'stage', s.stage);
    if (alert && alert.stage === s.stage && alert.pipeline === analysis.pipeline) name.classList.add('alerted');
    tr.appendChild(name);
    const status = el('td', 'status status-' + (STATUSES.includes(s.status) ? s.status : 'unknown'));
    status.appendChild(el('span', 'dot'));
    status.appendChild(document.createTextNode(s.status));
    tr.appendChild(status);
    tr.appendChild(el('td', 'num', !Number.isFinite(s.t0) ? '–' : s.t0 === t0 ? '0' : '+' + fmtMs(s.t0 - t0)));
    tr.appendChild(el('td', 'num', fmtMs(s.duration_ms)));
    tr.appendChild(el('td', 'num', fmtCount(s.records_in)));
    tr.appendChild(el('td', 'num', fmtCount(s.records_out)));
    tr.appendChild(el('td', 'num', fmtCount(s.records_rejected)));
    const hops = tr.appendChild(el('td', 'hops'));
    for (const h of s.hops) hops.appendChild(el('div', '', h.from + ' (' + fmtMs(h.delay_ms) + ')'));
    hops.title = 'Upstream stages, and the hand-over from the end of each to the start of ' + s.stage;
    tr.appendChild(el('td', 'num lost', s.lost > 0 ? fmtCount(s.lost) : s.lost < 0 ? '+' + fmtCount(-s.lost) + ' read' : ''));
    body.appendChild(tr);
  }
  for (const name of analysis.missing) {
    const tr = el('tr', 'missing');
    tr.dataset.stage = name;
    const cell = tr.appendChild(el('td', 'stage', name));
    if (alert && alert.stage === name && alert.pipeline === analysis.pipeline) cell.classList.add('alerted');
    const td = el('td', 'status', 'no event from this run');
    td.colSpan = 8;
    tr.appendChild(td);
    body.appendChild(tr);
  }
  return table;
}

// ---------------------------------------------------------------- charts

const CHART = { width: 560, height: 130, left: 44, right: 8, top: 8, bottom: 20 };

/** Runs of consecutive indices for which `ok(i)` holds: [[from, to], ...]. */
function runs(n, ok) {
  const out = [];
  let from = -1;
  for (let i = 0; i <= n; i++) {
    if (i < n && ok(i)) {
      if (from < 0) from = i;
    } else if (from >= 0) {
      out.push([from, i - 1]);
      from = -1;
    }
  }
  return out;
}

const finite = (x) => typeof x === 'number' && Number.isFinite(x);

/**
 * One metric over the window: the value as a line, the expected value dashed, the normal
 * band shaded, warming-up buckets tinted and anomalous buckets marked. Hand-written SVG:
 * a chart library would be more code to ship than this.
 */
function chart(metric, points) {
  const figure = el('figure', 'chart-card');
  figure.dataset.metric = metric;
  const caption = el('figcaption');
  caption.appendChild(el('strong', '', metric));
  const last = points[points.length - 1];
  if (last) {
    caption.appendChild(el('span', '', 'latest ' + fmt(last.value) + ' · expected ' + fmt(last.expected)
      + ' · band ' + fmt(last.lower) + '–' + fmt(last.upper) + ' · score ' + fmtScore(last.score)));
  }
  const anomalies = points.filter((p) => p.anomalous).length;
  if (anomalies) caption.appendChild(el('span', 'flag', anomalies + ' anomalous'));
  figure.appendChild(caption);

  const { width: W, height: H, left: L, right: R, top: T, bottom: B } = CHART;
  const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img' });
  root.dataset.metric = metric;
  root.setAttribute('aria-label', metric + ' over the last ' + points.length + ' buckets');
  figure.appendChild(root);
  if (points.length === 0) return figure;

  const times = points.map((p) => Date.parse(p.bucket_start));
  const step = points.length > 1 ? (times[times.length - 1] - times[0]) / (points.length - 1) : 60000;
  const t0 = times[0] - step / 2;
  const t1 = times[times.length - 1] + step / 2;
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of points) {
    for (const v of [p.value, p.lower, p.upper, p.expected]) {
      if (finite(v)) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
  }
  if (!Number.isFinite(lo)) {
    lo = 0;
    hi = 1;
  }
  if (hi - lo < 1e-12) {
    const pad = Math.abs(hi) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const margin = (hi - lo) * 0.06;
  // Counts, rates and durations are never negative: keep the axis from dipping below 0.
  lo = lo >= 0 ? Math.max(0, lo - margin) : lo - margin;
  hi += margin;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + ((hi - v) / (hi - lo)) * (H - T - B);
  const xy = (i, v) => x(times[i]).toFixed(1) + ',' + y(v).toFixed(1);
  const half = (x(t0 + step) - x(t0)) / 2;

  // Axes: the value range at the left, the time range below.
  svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }, root);
  svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }, root);
  svg('text', { x: L - 4, y: T + 8, 'text-anchor': 'end' }, root).textContent = fmtCompact(hi);
  svg('text', { x: L - 4, y: H - B, 'text-anchor': 'end' }, root).textContent = fmtCompact(lo);
  svg('text', { x: L, y: H - 6 }, root).textContent = shortTime(points[0].bucket_start);
  svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end' }, root).textContent = shortTime(last.bucket_start);

  for (const [a, b] of runs(points.length, (i) => points[i].warming_up)) {
    svg('rect', {
      class: 'warming', x: (x(times[a]) - half).toFixed(1), y: T,
      width: (x(times[b]) - x(times[a]) + 2 * half).toFixed(1), height: H - T - B,
    }, root);
  }
  const banded = (i) => finite(points[i].lower) && finite(points[i].upper);
  let band = '';
  for (const [a, b] of runs(points.length, banded)) {
    const upper = [];
    const lower = [];
    for (let i = a; i <= b; i++) {
      upper.push(xy(i, points[i].upper));
      lower.unshift(xy(i, points[i].lower));
    }
    if (a === b) { // a lone bucket: a bar as wide as the bucket
      const xa = x(times[a]);
      band += 'M' + (xa - half).toFixed(1) + ',' + y(points[a].upper).toFixed(1)
        + 'H' + (xa + half).toFixed(1) + 'V' + y(points[a].lower).toFixed(1)
        + 'H' + (xa - half).toFixed(1) + 'Z';
    } else {
      band += 'M' + upper.join('L') + 'L' + lower.join('L') + 'Z';
    }
  }
  if (band) svg('path', { class: 'band', d: band }, root);
  const line = (field) => runs(points.length, (i) => finite(points[i][field]))
    .map(([a, b]) => 'M' + points.slice(a, b + 1).map((p, k) => xy(a + k, p[field])).join('L'))
    .join('');
  const expected = line('expected');
  if (expected) svg('path', { class: 'expected', d: expected }, root);
  const value = line('value');
  if (value) svg('path', { class: 'value', d: value }, root);

  points.forEach((p, i) => {
    if (!finite(p.value)) return;
    const dot = svg('circle', {
      class: p.anomalous ? 'anomaly' : 'point',
      cx: x(times[i]).toFixed(1), cy: y(p.value).toFixed(1), r: p.anomalous ? 4.5 : 1.6,
    }, root);
    dot.dataset.bucket = p.bucket_start;
    svg('title', {}, dot).textContent = fullTime(p.bucket_start) + ': value ' + fmt(p.value)
      + ', expected ' + fmt(p.expected) + ', band ' + fmt(p.lower) + '–' + fmt(p.upper)
      + ', score ' + fmtScore(p.score) + (p.anomalous ? ' (anomalous)' : '')
      + (p.warming_up ? ' (warming up)' : '');
  });
  return figure;
}

// ---------------------------------------------------------------- wiring

function start() {
  let typing = null;
  $('filter').addEventListener('input', (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.q = event.target.value.trim();
      state.limit = PAGE;
      renderOverview();
      refresh();
    }, 150);
  });
  for (const button of $('health-filter').querySelectorAll('button')) {
    button.addEventListener('click', () => {
      state.health = button.dataset.health;
      state.limit = PAGE;
      renderOverview();
      refresh();
    });
  }
  $('more').addEventListener('click', () => {
    state.limit = Math.min(MAX_ROWS, state.limit + PAGE);
    refresh();
  });
  $('stages').tBodies[0].addEventListener('click', (event) => {
    const tr = event.target.closest('tr');
    if (!tr || tr.dataset.stage === undefined) return;
    const link = event.target.closest('a');
    if (link && (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey)) return;
    event.preventDefault();
    openStage(tr.dataset.pipeline, tr.dataset.stage);
  });
  for (const [id, view] of [['tab-active', 'active'], ['tab-recent', 'recent']]) {
    $(id).addEventListener('click', () => {
      state.alerts = view;
      $('tab-active').setAttribute('aria-pressed', String(view === 'active'));
      $('tab-recent').setAttribute('aria-pressed', String(view === 'recent'));
      refresh();
    });
  }
  $('detail-close').addEventListener('click', () => closeStage());
  $('run-close').addEventListener('click', () => closeRun());
  $('find-run').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $('find-run-id').value.trim();
    if (id) openRun(id);
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape' || event.target.tagName === 'INPUT') return;
    if (state.run !== null) closeRun();
    else if (state.open) closeStage();
  });
  // The address says what is open; going back and forth reopens it as it was.
  const follow = () => {
    const open = stageFromPath(location.pathname);
    const run = runFromLocation();
    if (run === null) {
      if (state.run !== null) closeRun(true);
    } else if (run !== state.run) {
      openRun(run, null, true);
    }
    if (open) openStage(open.pipeline, open.stage, true);
    else if (state.open) closeStage(true);
    refresh();
  };
  window.addEventListener('popstate', follow);
  follow();
  connect();
}

start();
