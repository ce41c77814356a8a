/**
 * The server's tfserve endpoints, behind Jupyter's own auth.
 *
 * Everything goes through `ServerConnection.makeRequest`, which adds the Jupyter
 * token or cookie and the XSRF header that browser POSTs need. This extension
 * talks to `{base}tfserve/api/...` (management) and `{base}tfserve/v1/...`
 * (TF Serving REST) only.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface IEngineStatus {
  state: string;
  restarts: number;
  last_exit: string;
  pid: number | null;
  rest_port: number;
  grpc_port: number;
}

export interface IVersionStatus {
  version: string;
  state: string;
  status: { error_code: string; error_message: string };
}

export interface IModel {
  name: string;
  base_path: string;
  labels: Record<string, string>;
  model_version_status: IVersionStatus[];
  batching: Record<string, unknown> | null;
  /** The request log (logging_config), when the model is logging. */
  logging?: {
    sampling_rate: number;
    filename_prefix: string;
    records_written: number;
    records_dropped: number;
  } | null;
  routing: {
    split: Record<string, number> | null;
    shadow: { target: string } | null;
  } | null;
}

export interface IWindowPoint {
  time: number;
  requests: number;
  errors: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
}

export interface IVersionWindow {
  requests: number;
  errors: number;
  error_rate: number;
  requests_per_second: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  series: IWindowPoint[];
}

export interface IWindows {
  model: string;
  seconds: number;
  now: number;
  versions: Record<string, IVersionWindow>;
}

export interface IShareToken {
  id: string;
  token: string;
  model: string;
  verbs: string[];
  expires_at: number;
}

/** An error the server answered, with the message of its `{"error": ...}` body. */
export class TFServeError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

function settings(): ServerConnection.ISettings {
  return ServerConnection.makeSettings();
}

/** The absolute URL of `{base}tfserve/<path>`, as another client (curl) would call it. */
export function tfserveUrl(path: string): string {
  const base = settings().baseUrl;
  return URLExt.join(base, 'tfserve') + '/' + path;
}

/** The TF Serving REST URL of a model's predict verb. */
export function predictUrl(model: string): string {
  return tfserveUrl(`v1/models/${encodeURIComponent(model)}:predict`);
}

/** The KServe V2 REST URL of a model's infer endpoint, beside TF Serving's (same door, same token). */
export function v2InferUrl(model: string): string {
  return tfserveUrl(`v2/models/${encodeURIComponent(model)}/infer`);
}

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const connection = settings();
  const url = URLExt.join(connection.baseUrl, 'tfserve', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, connection);
  } catch (error) {
    throw new TFServeError(`The Jupyter server did not answer: ${error}`, 0);
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data.error === 'string' && data.error) ||
      (data && typeof data.message === 'string' && data.message) ||
      `${response.status} ${response.statusText}`;
    throw new TFServeError(message, response.status);
  }
  return data as T;
}

function json(method: string, body: unknown): RequestInit {
  return {
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  };
}

export function engineStatus(): Promise<IEngineStatus> {
  return request<IEngineStatus>('api/engine');
}

export async function listModels(): Promise<IModel[]> {
  const answer = await request<{ models: IModel[] }>('api/models');
  return answer.models;
}

export function windows(model: string, seconds = 60): Promise<IWindows> {
  return request<IWindows>(
    `api/models/${encodeURIComponent(model)}/windows?seconds=${seconds}`
  );
}

export function unload(model: string): Promise<unknown> {
  return request(`api/models/${encodeURIComponent(model)}`, {
    method: 'DELETE'
  });
}

export function promote(model: string, version: number): Promise<IModel> {
  return request<IModel>(
    `api/models/${encodeURIComponent(model)}/promote`,
    json('POST', { version })
  );
}

export function createToken(
  model: string,
  expiresInSeconds: number,
  verbs: string[] = ['predict', 'metadata']
): Promise<IShareToken> {
  return request<IShareToken>(
    'api/tokens',
    json('POST', {
      model,
      verbs,
      expires_in_seconds: expiresInSeconds,
      description: 'shared from JupyterLab'
    })
  );
}

/** `GET tfserve/v1/models/NAME/metadata`: the signatures, to write an example request. */
export function metadata(model: string): Promise<any> {
  return request<any>(`v1/models/${encodeURIComponent(model)}/metadata`);
}

/** The deploy targets `jupyter tfserve deploy --target` takes (jupyter_tfserve/deploy/arguments.py). */
export const DEPLOY_TARGETS = ['kubernetes', 'kserve', 'kserve-runtime'] as const;

export interface IDeployQuery {
  target: string;
  /** One model of the running config; all of them when absent. */
  model?: string;
  /** Each base path becomes `storage_uri/<model>` (needed for local base paths). */
  storage_uri?: string;
  image?: string;
}

/**
 * `GET tfserve/api/deploy`: the manifests `jupyter tfserve deploy` would write for the
 * running config, as one multi-document YAML text (notes as comments at its top).
 */
export async function deployManifests(query: IDeployQuery): Promise<string> {
  const connection = settings();
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value) {
      params.set(key, value);
    }
  }
  const url = URLExt.join(connection.baseUrl, 'tfserve', 'api/deploy') + '?' + params.toString();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, {}, connection);
  } catch (error) {
    throw new TFServeError(`The Jupyter server did not answer: ${error}`, 0);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const data = JSON.parse(text);
      message =
        (typeof data.error === 'string' && data.error) ||
        (typeof data.message === 'string' && data.message) ||
        message;
    } catch {
      // not JSON: the status line says it
    }
    throw new TFServeError(message, response.status);
  }
  return text;
}
