#!/bin/bash
# usage: probe_cli.sh ; prints rc, stderr line count, first stderr line per case
PY=${PYTHON:-python}
D=$(mktemp -d); cd $D
$PY -c "import numpy as np; np.save('q.npy', np.random.rand(4,2,8).astype('f4')); np.save('big.npy', (np.random.randn(4,2,8)*1e20).astype('f4'))"
ln -sf q.npy link.npy
export ATTNKIT_MAX_INPUT_BYTES=${ATTNKIT_MAX_INPUT_BYTES:-67108864}
run() { label="$1"; shift; out=$(timeout 60 "$@" 2>&1 >/dev/null </dev/null); rc=$?; n=$(printf "%s" "$out" | grep -c .); printf "%-34s rc=%-3s lines=%s  %s\n" "$label" "$rc" "$n" "$(printf "%s" "$out" | head -1 | cut -c1-150)"; }
A="$PY -m attnkit.cli"
run "overwrite input -o q.npy" $A compute --type flash --heads 2 --dim 8 -q q.npy -o q.npy
run "overwrite via symlink" $A compute --type flash --heads 2 --dim 8 -q link.npy -o q.npy
run "overwrite via ./ path" $A compute --type flash --heads 2 --dim 8 -q q.npy -o ./sub/../q.npy
run "convert onto symlinked input" $A convert link.npy q.npy
run "heatmap onto input" $A compute --type flash --heads 2 --dim 8 -q q.npy --heatmap q.npy
run "-q /dev/zero" $A compute --type flash --heads 2 --dim 8 -q /dev/zero --input-format raw
run "-q /dev/zero no fmt" $A compute --type flash --heads 2 --dim 8 -q /dev/zero
run "NaN output 1e20 inputs" $A compute --type flash --heads 2 --dim 8 -q big.npy -o out.npy
run "serve --timeout nan" $A serve --timeout nan
run "serve --timeout inf" $A serve --timeout inf
run "serve --timeout -1" $A serve --timeout -1
run "serve bad env queue" env ATTNKIT_SERVER_QUEUE=abc $A serve
run "serve bad env timeout" env ATTNKIT_SERVER_REQUEST_TIMEOUT_S=nan $A serve
run "serve bad env json" env ATTNKIT_SERVER_SETTINGS_JSON='[1' $A serve
run "serve bad env isolation" env ATTNKIT_SERVER_ISOLATION=fork $A serve
run "serve busy port" $PY -c "
import socket,subprocess,sys
s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); p=s.getsockname()[1]
r=subprocess.run([sys.executable,'-m','attnkit.cli','serve','--port',str(p)],capture_output=True,text=True,timeout=60)
sys.stderr.write(r.stderr); sys.exit(r.returncode)"
run "serve bad host" $A serve --host 'no such host!'
run "serve bad host 2" $A serve --host 999.1.1.1
run "serve --workers 0" $A serve --workers 0
run "serve --port 70000" $A serve --port 70000
run "serve --limit bad" $A serve --limit nope=1
run "serve --limit queue=x" $A serve --limit queue=x
run "compute --heads abc" $A compute --type flash --heads abc --dim 8 --random 4
run "compute --causal maybe" $A compute --type flash --heads 2 --dim 8 --random 4 --causal maybe
run "compute --seed -1" $A compute --type flash --heads 2 --dim 8 --random 4 --seed -1
run "compute --random 10**12" $A compute --type flash --heads 2 --dim 8 --random 1000000000000
run "compute -o /proc/x.npy" $A compute --type flash --heads 2 --dim 8 --random 4 -o /proc/x.npy
run "compute -o dir" $A compute --type flash --heads 2 --dim 8 --random 4 -o /tmp
run "compute --dtype int8" $A compute --type flash --heads 2 --dim 8 --random 4 --dtype int8
run "compute --shape junk" $A compute --type flash --heads 2 --dim 8 -q q.npy --shape 1,2,x
run "compute weights bad" $A compute --type multi_head --heads 2 --dim 8 --random 4 --weights q.npy
run "config not utf8" sh -c "printf '\377\376' > bad.toml; $A --config bad.toml info"
run "config deep" sh -c "$PY -c \"open('deep.toml','w').write('a = '+'['*5000+']'*5000)\"; $A --config deep.toml info"
run "convert pickled pt" sh -c "$PY -c \"import torch; torch.save({'a': object()}, 'p.pt')\" 2>/dev/null; $A convert p.pt out.safetensors"
run "convert corrupt npz" sh -c "head -c 100 /dev/urandom > c.npz; $A convert c.npz out.npy"
run "benchmark --seq-len 0" $A benchmark flash --seq-len 0
run "demo --length -3" $A demo --length -3
