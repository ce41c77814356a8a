/**
 * The dialogs behind Promote and Share.
 */
import { Clipboard, Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IModel, IShareToken } from './api';
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
