// Boot Pyodide, install attnkit, run it. Progress goes to #log and to window.attnkitStatus (read by tests).
const params = new URLSearchParams(location.search);
const indexURL = params.get('pyodide') || new URL('./pyodide/', location.href).href;
const logEl = document.getElementById('log');
const status = { stage: 'starting', python: null, attnkit: null, arrayApiCompat: null, numpy: null, result: null, error: null };
window.attnkitStatus = status;

function log(line, cls) {
  if (logEl.textContent === 'starting…') logEl.textContent = '';
  const span = document.createElement('span');
  if (cls) span.className = cls;
  span.textContent = line + '\n';
  logEl.appendChild(span);
}

const RUN = `
import json, numpy as np, attnkit
def run(L, H, D, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((L, H, D)).astype(np.float32) for _ in range(3))
    out = attnkit.FlashAttention(heads=H, dim=D, block_size=8).forward(q, k, v)
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(D)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    ref = np.einsum("hqk,khd->qhd", p, v.astype(np.float64))
    return json.dumps({"shape": list(out.shape), "max_abs_err": float(np.abs(out - ref).max()),
                       "first": [float(x) for x in out.reshape(-1)[:4]]})
`;

async function main() {
  status.stage = 'loading pyodide';
  log(`loading Pyodide from ${indexURL}`);
  const { loadPyodide } = await import(new URL('pyodide.mjs', indexURL).href);
  const pyodide = await loadPyodide({ indexURL });
  status.python = pyodide.runPython('import sys; sys.version.split()[0]');
  log(`Python ${status.python} is running in the page (Pyodide ${pyodide.version})`, 'ok');

  status.stage = 'installing attnkit';
  const index = await (await fetch('./wheels/index.json')).json();
  const wheelUrls = index.wheels.map((w) => new URL(`./wheels/${w}`, location.href).href);
  await pyodide.loadPackage(wheelUrls, { messageCallback: () => {} });
  status.attnkit = pyodide.runPython('import attnkit; attnkit.__version__');
  log(`attnkit ${status.attnkit} imported (${index.wheels.join(', ')})`, 'ok');
  status.arrayApiCompat = pyodide.runPython('import array_api_compat; array_api_compat.__version__');

  status.stage = 'loading numpy';
  try {
    await pyodide.loadPackage('numpy', { messageCallback: () => {}, errorCallback: () => {} });
    pyodide.runPython('import numpy');
    status.numpy = pyodide.runPython('import numpy; numpy.__version__');
    log(`NumPy ${status.numpy} loaded`, 'ok');
  } catch (err) {
    status.numpy = 'unavailable';
    status.stage = 'done';
    log(`NumPy is not available from ${indexURL} (${String(err.message || err).trim().split('\n').pop()}). The npm "pyodide" package ships ` +
        'the runtime but not its package repository; open this page with ?pyodide=<full Pyodide distribution URL> to run the mechanisms.', 'err');
    return;
  }

  pyodide.runPython(RUN);
  const run = pyodide.globals.get('run');
  const go = () => {
    const [L, H, D] = ['len', 'heads', 'dim'].map((id) => Number(document.getElementById(id).value));
    const t0 = performance.now();
    const res = JSON.parse(run(L, H, D));
    res.ms = performance.now() - t0;
    status.result = res;
    log(`FlashAttention(${L}x${H}x${D}) -> shape [${res.shape}] in ${res.ms.toFixed(1)} ms, max |error| vs float64 reference ${res.max_abs_err.toExponential(2)}`,
      res.max_abs_err < 1e-4 ? 'ok' : 'err');
  };
  document.getElementById('run').disabled = false;
  document.getElementById('run').onclick = go;
  go();
  status.stage = 'done';
}

main().catch((err) => {
  status.error = String(err && err.message ? err.message : err);
  status.stage = 'failed';
  log(`failed: ${status.error}`, 'err');
});
