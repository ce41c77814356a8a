/**
 * The dialogs behind Promote and Share.
 */
import { Clipboard, Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { DEPLOY_TARGETS, IModel, IShareToken, deployManifests } from './api';
import { element } from './dom';

/** The versions that can be promoted: those serving now. */
export function availableVersions(model: IModel): number[] {
  return model.model_version_status
    .filter(status => status.state === 'AVAILABLE')
    .map(status => Number(status.version))
    .sort((a, b) => b - a);
}

/** Pick a version of a model to label `stable`. */
export class PromoteBody extends Widget implements Dialog.IBodyWidget<number> {
  private _select: HTMLSelectElement;

  constructor(model: IModel) {
    super();
    this.addClass('jp-tfserve-dialog');
    this.addClass('jp-tfserve-promote-dialog');
    const stable = model.labels['stable'];
    const intro = element(
      'p',
      undefined,
      stable
        ? `"stable" points at version ${stable} of ${model.name}. Move it to:`
        : `${model.name} has no "stable" label yet. Label this version stable:`
    );
    this._select = element('select', 'jp-tfserve-promote-version');
    const versions = availableVersions(model);
    for (const version of versions) {
      const option = element('option', undefined, `version ${version}`);
      option.value = String(version);
      this._select.appendChild(option);
    }
    const preferred = versions.find(v => String(v) !== String(stable));
    if (preferred !== undefined) {
      this._select.value = String(preferred);
    }
    const note = element(
      'p',
      'jp-tfserve-dialog-note',
      'Any A/B split or shadow on this model is removed at the same time.'
    );
    this.node.append(intro, this._select, note);
  }

  getValue(): number {
    return Number(this._select.value);
  }
}

export const EXPIRY_CHOICES: Array<[string, number]> = [
  ['1 hour', 3600],
  ['1 day', 86400],
  ['7 days', 7 * 86400],
  ['30 days', 30 * 86400]
];

/** Before a token is made: what it grants, for how long. */
export class ShareOptionsBody extends Widget implements Dialog.IBodyWidget<number> {
  private _select: HTMLSelectElement;

  constructor(model: string) {
    super();
    this.addClass('jp-tfserve-dialog');
    this.addClass('jp-tfserve-share-options');
    const intro = element(
      'p',
      undefined,
      `A share token lets anyone who holds it call predict and metadata on ` +
        `${model}, and nothing else on this server (no notebooks, no files, ` +
        `no other model), until it expires or is revoked.`
    );
    const label = element('label', undefined, 'Expires after ');
    this._select = element('select', 'jp-tfserve-share-expiry');
    for (const [text, seconds] of EXPIRY_CHOICES) {
      const option = element('option', undefined, text);
      option.value = String(seconds);
      this._select.appendChild(option);
    }
    this._select.value = '86400';
    label.appendChild(this._select);
    this.node.append(intro, label);
  }

  getValue(): number {
    return Number(this._select.value);
  }
}

/** A read-only field with a copy button. */
function copyField(
  name: string,
  title: string,
  value: string,
  multiline = false
): HTMLElement {
  const row = element('div', 'jp-tfserve-share-field');
  row.dataset.field = name;
  row.appendChild(element('div', 'jp-tfserve-share-field-title', title));
  const box = element('div', 'jp-tfserve-share-field-box');
  const field = multiline
    ? element('textarea', `jp-tfserve-share-${name}`)
    : element('input', `jp-tfserve-share-${name}`);
  field.value = value;
  field.readOnly = true;
  field.spellcheck = false;
  if (field instanceof HTMLTextAreaElement) {
    field.rows = value.split('\n').length;
  }
  field.addEventListener('focus', () => field.select());
  const button = element('button', 'jp-mod-styled jp-tfserve-copy', 'Copy');
  button.dataset.copy = name;
  button.title = `Copy the ${title.toLowerCase()} to the clipboard`;
  button.addEventListener('click', () => {
    Clipboard.copyToSystem(value);
    button.textContent = 'Copied';
    window.setTimeout(() => (button.textContent = 'Copy'), 1500);
  });
  box.append(field, button);
  row.appendChild(box);
  return row;
}

/** After the token is made: the URL, a curl command and the token, each to copy. */
export class ShareResultBody extends Widget {
  constructor(token: IShareToken, url: string, curl: string, v2Url: string) {
    super();
    this.addClass('jp-tfserve-dialog');
    this.addClass('jp-tfserve-share-result');
    this.node.dataset.tokenId = token.id;
    const expires = new Date(token.expires_at * 1000);
    this.node.append(
      element(
        'p',
        undefined,
        `Token ${token.id} for ${token.model} (${token.verbs.join(', ')}), ` +
          `valid until ${expires.toLocaleString()}. It is shown only now: copy it.`
      ),
      copyField('url', 'Predict URL', url),
      copyField('v2url', 'KServe V2 infer URL', v2Url),
      copyField('curl', 'curl command', curl, true),
      copyField('token', 'Token', token.token)
    );
  }
}

const TARGET_TITLES: Record<string, string> = {
  kubernetes: 'Kubernetes (stock TF Serving Deployment)',
  kserve: 'KServe InferenceService',
  'kserve-runtime': "KServe with this engine's ServingRuntime"
};

/**
 * The manifests `jupyter tfserve deploy` would write for what this engine serves now:
 * a target, a storage URI for local base paths, the YAML read-only, copy and download.
 */
export class DeployBody extends Widget {
  private _target: HTMLSelectElement;
  private _storage: HTMLInputElement;
  private _yaml: HTMLPreElement;
  private _error: HTMLDivElement;
  private _copy: HTMLButtonElement;
  private _download: HTMLButtonElement;
  private _text = '';
  private _asked = 0;

  constructor(readonly model: string) {
    super();
    this.addClass('jp-tfserve-dialog');
    this.addClass('jp-tfserve-deploy-dialog');
    const intro = element(
      'p',
      undefined,
      `What \`jupyter tfserve deploy\` would write for ${model} as this engine serves it now ` +
        '(versions, labels, split). Nothing is written or uploaded here: apply the file with kubectl.'
    );
    const targetLabel = element('label', undefined, 'Target ');
    this._target = element('select', 'jp-tfserve-deploy-target');
    for (const target of DEPLOY_TARGETS) {
      const option = element('option', undefined, TARGET_TITLES[target] ?? target);
      option.value = target;
      this._target.appendChild(option);
    }
    targetLabel.appendChild(this._target);
    const storageLabel = element('label', 'jp-tfserve-deploy-storage-label', 'Storage URI ');
    this._storage = element('input', 'jp-tfserve-deploy-storage');
    this._storage.placeholder = 's3://bucket/prefix (for local base paths)';
    this._storage.spellcheck = false;
    storageLabel.appendChild(this._storage);
    this._error = element('div', 'jp-tfserve-deploy-error');
    this._error.hidden = true;
    this._yaml = element('pre', 'jp-tfserve-deploy-yaml');
    this._yaml.setAttribute('aria-readonly', 'true');
    this._yaml.tabIndex = 0;
    const buttons = element('div', 'jp-tfserve-deploy-buttons');
    this._copy = element('button', 'jp-mod-styled jp-tfserve-copy jp-tfserve-deploy-copy', 'Copy');
    this._copy.title = 'Copy the manifests to the clipboard';
    this._copy.addEventListener('click', () => {
      Clipboard.copyToSystem(this._text);
      this._copy.textContent = 'Copied';
      window.setTimeout(() => (this._copy.textContent = 'Copy'), 1500);
    });
    this._download = element('button', 'jp-mod-styled jp-tfserve-deploy-download', 'Download');
    this._download.title = 'Save the manifests as one YAML file (kubectl apply -f FILE)';
    this._download.addEventListener('click', () => this._save());
    buttons.append(this._copy, this._download);
    this.node.append(intro, targetLabel, storageLabel, this._error, this._yaml, buttons);
    this._target.addEventListener('change', () => void this.render());
    // As the user types (Enter would close the dialog): ask once they pause.
    let typing = 0;
    this._storage.addEventListener('input', () => {
      window.clearTimeout(typing);
      typing = window.setTimeout(() => void this.render(), 400);
    });
    void this.render();
  }

  /** The file name the download gets. */
  get fileName(): string {
    return `${this.model}-${this._target.value}.yaml`;
  }

  /** Ask the server again for the chosen target; a later answer replaces an earlier one. */
  async render(): Promise<void> {
    const asked = ++this._asked;
    this.node.dataset.state = 'loading';
    this._setText('');
    this._error.hidden = true;
    let text: string;
    try {
      text = await deployManifests({
        target: this._target.value,
        model: this.model,
        storage_uri: this._storage.value.trim()
      });
    } catch (error) {
      if (asked !== this._asked) {
        return;
      }
      this._error.textContent = error instanceof Error ? error.message : String(error);
      this._error.hidden = false;
      this.node.dataset.state = 'error';
      return;
    }
    if (asked !== this._asked) {
      return;
    }
    this._setText(text);
    this.node.dataset.state = 'ready';
  }

  private _setText(text: string): void {
    this._text = text;
    this._yaml.textContent = text;
    this._yaml.hidden = !text;
    this._copy.disabled = !text;
    this._download.disabled = !text;
  }

  private _save(): void {
    const url = URL.createObjectURL(new Blob([this._text], { type: 'application/yaml' }));
    const link = element('a');
    link.href = url;
    link.download = this.fileName;
    document.body.appendChild(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
}
