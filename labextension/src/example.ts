/**
 * An example predict body for a model, written from its serving_default signature,
 * so the curl command in the share dialog works as it is.
 */

const FALLBACK = '{"instances": [1.0, 2.0]}';
const MAX_ELEMENTS = 1024;

interface ITensorInfo {
  dtype?: string;
  tensor_shape?: { dim?: Array<{ size?: string | number }>; unknown_rank?: boolean };
}

function scalar(dtype: string, index: number): unknown {
  if (dtype === 'DT_STRING') {
    return index === 0 ? 'hello' : 'world';
  }
  if (dtype === 'DT_BOOL') {
    return index === 0;
  }
  if (/^DT_U?INT/.test(dtype)) {
    return index + 1;
  }
  return index === 0 ? 1.0 : 2.0;
}

/** One instance (the batch dimension dropped) of the tensor, or undefined if too big to write. */
function instance(info: ITensorInfo, index: number): unknown | undefined {
  const shape = info.tensor_shape;
  if (!shape || shape.unknown_rank) {
    return scalar(info.dtype ?? 'DT_FLOAT', index);
  }
  const dims = (shape.dim ?? []).map(d => Number(d.size ?? -1));
  const inner = dims.slice(1).map(size => (size < 0 ? 1 : size));
  if (inner.reduce((n, size) => n * size, 1) > MAX_ELEMENTS) {
    return undefined;
  }
  const build = (level: number): unknown =>
    level === inner.length
      ? scalar(info.dtype ?? 'DT_FLOAT', index)
      : Array.from({ length: inner[level] }, () => build(level + 1));
  return build(0);
}

function format(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isInteger(value) && !Object.is(value, -0)
      ? value.toString()
      : String(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(format).join(', ')}]`;
  }
  if (value !== null && typeof value === 'object') {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${format(v)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value);
}

/** Floats are written with a decimal point (1.0), as TF Serving's docs do. */
function formatFloats(value: unknown, floats: boolean): string {
  const text = format(value);
  return floats ? text.replace(/(^|[[,\s:])(-?\d+)(?=[\],}]|$)/g, '$1$2.0') : text;
}

export function exampleRequest(metadata: any): string {
  try {
    const signatures = metadata?.metadata?.signature_def?.signature_def ?? {};
    const signature = signatures.serving_default ?? Object.values(signatures)[0];
    const inputs: Record<string, ITensorInfo> = (signature as any)?.inputs ?? {};
    const names = Object.keys(inputs);
    if (names.length === 0) {
      return FALLBACK;
    }
    const instances: unknown[] = [];
    for (const index of [0, 1]) {
      const values: Record<string, unknown> = {};
      for (const name of names) {
        const value = instance(inputs[name], index);
        if (value === undefined) {
          return FALLBACK;
        }
        values[name] = value;
      }
      instances.push(names.length === 1 ? values[names[0]] : values);
    }
    const allFloat = names.every(n =>
      /^DT_(FLOAT|DOUBLE|HALF|BFLOAT16)$/.test(inputs[n].dtype ?? 'DT_FLOAT')
    );
    return `{"instances": ${formatFloats(instances, allFloat)}}`;
  } catch {
    return FALLBACK;
  }
}

/** A curl command line that calls the URL with the token and the body. */
export function curlCommand(url: string, token: string, body: string): string {
  const quote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;
  return [
    `curl -X POST ${quote(url)}`,
    `  -H ${quote(`Authorization: Bearer ${token}`)}`,
    `  -H 'Content-Type: application/json'`,
    `  -d ${quote(body)}`
  ].join(' \\\n');
}
