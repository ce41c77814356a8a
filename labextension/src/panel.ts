/**
 * The left side panel: served models, their versions and labels, live latency
 * and request rate, and the actions on each model.
 *
 * It polls every 2 s, and only while it is visible and the browser tab is
 * shown; errors back the poll off (up to 30 s). Cards are built once per model
 * and updated in place, so a refresh never closes an open menu.
 */
import { ISignal, Signal } from '@lumino/signaling';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  IEngineStatus,
  IModel,
  IWindows,
  engineStatus,
  listModels,
  windows
} from './api';
import { createSparkline, updateSparkline } from './sparkline';
import { formatMs, formatRate, modelStats } from './stats';
import { element } from './dom';

export const PANEL_REFRESH_MS = 2000;

/** What the card buttons do: the plugin's commands. */
export interface IModelActions {
  promote(model: string): void;
  unload(model: string): void;
  share(model: string): void;
  deploy(model: string): void;
  openDashboard(model: string): void;
  refresh(): void;
}

/** The engine and its models as one refresh saw them (engine null: the server did not answer). */
export interface ISnapshot {
  engine: IEngineStatus | null;
  models: IModel[] | null;
}

const ACTIONS: Array<[keyof IModelActions, string, string]> = [
  ['promote', 'Promote…', 'Label a version of this model "stable"'],
  ['openDashboard', 'A/B dashboard', 'Open a notebook with the A/B dashboard of this model'],
  ['share', 'Share…', 'Create a token that lets others call predict on this model'],
  ['deploy', 'Deploy…', 'Show the Kubernetes or KServe manifests that serve this model on a cluster'],
  ['unload', 'Unload', 'Stop serving this model']
];

const ACTION_NAMES: Record<string, string> = {
  promote: 'promote',
  openDashboard: 'dashboard',
  share: 'share',
  deploy: 'deploy',
  unload: 'unload'
};

class ModelCard {
  readonly node: HTMLLIElement;
  private _versions: HTMLUListElement;
  private _routing: HTMLDivElement;
  private _rate: HTMLSpanElement;
  private _latency: HTMLSpanElement;
  private _sparkline: SVGSVGElement;

  constructor(
    readonly name: string,
    actions: IModelActions
  ) {
    this.node = element('li', 'jp-tfserve-model');
    this.node.dataset.model = name;
    const header = element('div', 'jp-tfserve-model-header');
    header.append(
      element('span', 'jp-tfserve-model-name', name),
      (this._rate = element('span', 'jp-tfserve-rate'))
    );
    this._versions = element('ul', 'jp-tfserve-versions');
    this._routing = element('div', 'jp-tfserve-routing');
    const latencyRow = element('div', 'jp-tfserve-latency-row');
    this._sparkline = createSparkline();
    this._latency = element('span', 'jp-tfserve-latency');
    latencyRow.append(this._sparkline, this._latency);
    const buttons = element('div', 'jp-tfserve-actions');
    for (const [action, label, title] of ACTIONS) {
      const button = element('button', `jp-tfserve-action jp-tfserve-${ACTION_NAMES[action]}`, label);
      button.dataset.action = ACTION_NAMES[action];
      button.title = title;
      button.addEventListener('click', () => (actions[action] as (m: string) => void)(name));
      buttons.appendChild(button);
    }
    this.node.append(header, this._versions, this._routing, latencyRow, buttons);
  }

  update(model: IModel, window: IWindows | null): void {
    const byVersion = new Map<string, string[]>();
    for (const [label, version] of Object.entries(model.labels)) {
      byVersion.set(String(version), [...(byVersion.get(String(version)) ?? []), label]);
    }
    const rows: HTMLLIElement[] = [];
    const listed = new Set<string>();
    for (const status of model.model_version_status) {
      listed.add(status.version);
      const row = element('li', 'jp-tfserve-version');
      row.dataset.version = status.version;
      row.dataset.state = status.state;
      const failed = status.status.error_code !== 'OK';
      if (failed) {
        row.classList.add('jp-mod-error');
        row.title = `${status.status.error_code}: ${status.status.error_message}`;
      }
      row.append(
        element('span', 'jp-tfserve-version-number', `v${status.version}`),
        element(
          'span',
          'jp-tfserve-version-state',
          failed ? `${status.state} (${status.status.error_code})` : status.state
        )
      );
      for (const label of byVersion.get(status.version) ?? []) {
        const chip = element('span', 'jp-tfserve-label', label);
        chip.dataset.label = label;
        chip.title = `label "${label}" → version ${status.version}`;
        if (status.state !== 'AVAILABLE') {
          // A label on a version that cannot answer: requests to it fail, and splits on it are refused.
          chip.classList.add('jp-mod-stale');
          chip.textContent = `${label} ⚠`;
          chip.title = `label "${label}" is on version ${status.version}, which is ${status.state}, not AVAILABLE: requests to it fail; move it`;
        }
        row.appendChild(chip);
      }
      rows.push(row);
    }
    // Labels that point at a version with no status (not loaded yet).
    for (const [version, labels] of byVersion) {
      if (listed.has(version)) {
        continue;
      }
      const row = element('li', 'jp-tfserve-version jp-mod-dangling');
      row.dataset.version = version;
      row.dataset.state = 'NOT LOADED';
      row.append(
        element('span', 'jp-tfserve-version-number', `v${version}`),
        element('span', 'jp-tfserve-version-state', 'not loaded')
      );
      for (const label of labels) {
        const chip = element('span', 'jp-tfserve-label jp-mod-stale', `${label} ⚠`);
        chip.dataset.label = label;
        chip.title = `label "${label}" is on version ${version}, which is not loaded: requests to it fail; move it`;
        row.appendChild(chip);
      }
      rows.push(row);
    }
    if (rows.length === 0) {
      const row = element('li', 'jp-tfserve-version jp-mod-empty', 'no version found yet');
      rows.push(row);
    }
    this._versions.replaceChildren(...rows);

    const routing: string[] = [];
    const split = model.routing?.split;
    if (split && Object.keys(split).length) {
      routing.push(
        'split ' +
          Object.entries(split)
            .map(([arm, weight]) => `${arm}: ${weight}`)
            .join(', ')
      );
    }
    if (model.routing?.shadow) {
      routing.push(`shadow → ${model.routing.shadow.target}`);
    }
    if (model.batching) {
      routing.push('batching on');
    }
    if (model.logging) {
      const rate = model.logging.sampling_rate * 100;
      routing.push(`logging ${rate >= 1 ? rate.toFixed(0) : rate.toPrecision(1)}%`);
    }
    this._routing.textContent = routing.join(' · ');
    this._routing.hidden = routing.length === 0;

    const stats = modelStats(window);
    updateSparkline(this._sparkline, stats.points);
    this._rate.textContent = formatRate(stats.rate);
    this._rate.dataset.rate = stats.rate.toFixed(3);
    this._rate.title = 'requests per second over the last 10 s';
    this._latency.dataset.p50 = stats.p50 === null ? '' : stats.p50.toFixed(4);
    this._latency.dataset.p95 = stats.p95 === null ? '' : stats.p95.toFixed(4);
    this._latency.dataset.requests = String(stats.requests);
    if (stats.requests === 0) {
      this._latency.textContent = 'no requests in the last 60 s';
    } else {
      this._latency.replaceChildren(
        element('span', 'jp-tfserve-key-p50', 'p50'),
        ` ${formatMs(stats.p50)} · `,
        element('span', 'jp-tfserve-key-p95', 'p95'),
        ` ${formatMs(stats.p95)}`
      );
    }
    this._latency.title =
      `last 60 s: ${stats.requests} requests, ${stats.errors} errors ` +
      '(latency inside the engine)';
  }
}

export class TFServePanel extends Widget {
  private _actions: IModelActions;
  private _cards = new Map<string, ModelCard>();
  private _list: HTMLUListElement;
  private _engine: HTMLSpanElement;
  private _message: HTMLDivElement;
  private _updated: HTMLDivElement;
  private _poll: Poll;
  private _refreshes = 0;
  private _models: IModel[] = [];
  private _snapshot = new Signal<this, ISnapshot>(this);

  constructor(actions: IModelActions) {
    super();
    this._actions = actions;
    this.id = 'jupyter-tfserve-panel';
    this.addClass('jp-tfserve-panel');
    this.title.caption = 'TF Serving models';

    const header = element('div', 'jp-tfserve-header');
    const title = element('h2', 'jp-tfserve-title', 'TF Serving');
    this._engine = element('span', 'jp-tfserve-engine', '…');
    const refresh = element('button', 'jp-tfserve-refresh', '⟳');
    refresh.title = 'Refresh now';
    refresh.setAttribute('aria-label', 'Refresh');
    refresh.addEventListener('click', () => actions.refresh());
    header.append(title, this._engine, refresh);
    this._message = element('div', 'jp-tfserve-message');
    this._message.hidden = true;
    this._list = element('ul', 'jp-tfserve-models');
    this._updated = element('div', 'jp-tfserve-updated');
    this.node.append(header, this._message, this._list, this._updated);

    this._poll = new Poll({
      auto: false,
      factory: () => this._refresh(),
      frequency: { interval: PANEL_REFRESH_MS, backoff: true, max: 30 * 1000 },
      name: 'jupyter-tfserve:panel',
      standby: () => !this.isVisible || document.visibilityState === 'hidden'
    });
    void this._poll.start();
  }

  /** Each refresh's result, for the status bar. */
  get snapshot(): ISignal<this, ISnapshot> {
    return this._snapshot;
  }

  /** The models as last seen. */
  get models(): IModel[] {
    return this._models;
  }

  /** Refresh now if the panel is shown (a hidden panel refreshes when it is shown again). */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.refresh();
  }

  private _showMessage(text: string, kind: 'info' | 'error'): void {
    this._message.textContent = text;
    this._message.dataset.kind = kind;
    this._message.hidden = !text;
  }

  private _setEngine(engine: IEngineStatus | null): void {
    const state = engine ? engine.state : 'down';
    this._engine.dataset.state = state;
    this._engine.textContent = state === 'stopped' ? 'down' : state;
    this._engine.title = engine
      ? `engine pid ${engine.pid ?? '–'}, REST port ${engine.rest_port}, gRPC port ` +
        `${engine.grpc_port}, restarts ${engine.restarts}` +
        (engine.last_exit ? `, last exit: ${engine.last_exit}` : '')
      : 'the Jupyter server did not answer';
  }

  private async _refresh(): Promise<void> {
    let engine: IEngineStatus;
    try {
      engine = await engineStatus();
    } catch (error) {
      this._setEngine(null);
      this._list.classList.add('jp-mod-stale');
      this._showMessage(`Cannot reach the tfserve extension: ${(error as Error).message}`, 'error');
      this._snapshot.emit({ engine: null, models: null });
      throw error;
    }
    this._setEngine(engine);
    // While the engine is not running, the last cards stay, dimmed: they may be out of date.
    this._list.classList.toggle('jp-mod-stale', engine.state !== 'running');
    if (engine.state !== 'running') {
      this._showMessage(
        engine.state === 'stopped'
          ? `The engine is down${engine.last_exit ? ` (${engine.last_exit})` : ''}.`
          : `The engine is ${engine.state}…`,
        'info'
      );
      this._snapshot.emit({ engine, models: null });
      this._markUpdated();
      return;
    }
    let models: IModel[];
    try {
      models = await listModels();
    } catch (error) {
      this._list.classList.add('jp-mod-stale');
      this._showMessage(`Could not list models: ${(error as Error).message}`, 'error');
      this._snapshot.emit({ engine, models: null });
      throw error;
    }
    const allWindows = await Promise.all(
      models.map(model => windows(model.name, 60).catch(() => null))
    );
    this._models = models;
    this._render(models, allWindows);
    this._showMessage(
      models.length === 0
        ? 'No models are served. Load one from a notebook or with POST tfserve/api/models.'
        : '',
      'info'
    );
    this._snapshot.emit({ engine, models });
    this._markUpdated();
  }

  private _markUpdated(): void {
    this._refreshes += 1;
    this.node.dataset.refreshes = String(this._refreshes);
    this._updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  private _render(models: IModel[], allWindows: Array<IWindows | null>): void {
    const seen = new Set<string>();
    models.forEach((model, index) => {
      seen.add(model.name);
      let card = this._cards.get(model.name);
      if (!card) {
        card = new ModelCard(model.name, this._actions);
        this._cards.set(model.name, card);
      }
      card.update(model, allWindows[index]);
      // Keep the server's order (sorted by name) without rebuilding the list.
      if (this._list.children[index] !== card.node) {
        this._list.insertBefore(card.node, this._list.children[index] ?? null);
      }
    });
    for (const [name, card] of this._cards) {
      if (!seen.has(name)) {
        card.node.remove();
        this._cards.delete(name);
      }
    }
  }
}
