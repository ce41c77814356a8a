/**
 * The status bar item: "TF Serving: starting", "serving N models", "restarting", "down".
 *
 * It asks the server every 5 s while the browser tab is shown (the engine status
 * is answered by the Jupyter server without touching the engine; the model list
 * only when the engine runs), and takes the panel's refreshes as they come, asking
 * nothing itself while those are recent.
 */
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { engineStatus, listModels } from './api';
import { ISnapshot } from './panel';

export const STATUS_REFRESH_MS = 5000;

export function statusText(snapshot: ISnapshot): [string, string] {
  const engine = snapshot.engine;
  if (!engine || engine.state === 'stopped') {
    return ['down', 'TF Serving: down'];
  }
  if (engine.state !== 'running') {
    return [engine.state, `TF Serving: ${engine.state}`];
  }
  if (!snapshot.models) {
    return ['running', 'TF Serving: running'];
  }
  const serving = snapshot.models.filter(m =>
    m.model_version_status.some(s => s.state === 'AVAILABLE')
  ).length;
  const loading = snapshot.models.length - serving;
  const text =
    `TF Serving: serving ${serving} model${serving === 1 ? '' : 's'}` +
    (loading ? `, ${loading} not ready` : '');
  return ['running', text];
}

export class TFServeStatus extends Widget {
  private _poll: Poll;
  private _last = 0;

  constructor(onClick: () => void) {
    super();
    this.addClass('jp-tfserve-status');
    this.node.title = 'jupyter-tfserve: click to show the models';
    this.node.textContent = 'TF Serving: …';
    this.node.addEventListener('click', onClick);
    this._poll = new Poll({
      auto: true,
      factory: () => this._check(),
      frequency: { interval: STATUS_REFRESH_MS, backoff: true, max: 60 * 1000 },
      name: 'jupyter-tfserve:status',
      standby: 'when-hidden'
    });
  }

  setSnapshot(snapshot: ISnapshot): void {
    this._last = Date.now();
    const [state, text] = statusText(snapshot);
    this.node.dataset.state = state;
    this.node.textContent = text;
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  private async _check(): Promise<void> {
    // The panel, while shown, refreshes more often and passes its results on: no second request.
    if (Date.now() - this._last < STATUS_REFRESH_MS / 2) {
      return;
    }
    let snapshot: ISnapshot;
    try {
      const engine = await engineStatus();
      const models = engine.state === 'running' ? await listModels() : null;
      snapshot = { engine, models };
    } catch (error) {
      this.setSnapshot({ engine: null, models: null });
      throw error;
    }
    this.setSnapshot(snapshot);
  }
}
