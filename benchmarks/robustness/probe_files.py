import io, os, sys, struct, json, zipfile, numpy as np, traceback
sys.setrecursionlimit(3000)
from attnkit import io as aio, weights as W
from attnkit.errors import AttentionError
from attnkit.config import load_config
d="/tmp/rb/f"; os.makedirs(d, exist_ok=True)
def w(name, data):
    p=os.path.join(d,name); open(p,"wb").write(data); return p
cases=[]
def case(label, fn):
    try:
        fn(); cases.append((label,"ok"))
    except AttentionError as e: cases.append((label,"clean: "+str(e)[:150]))
    except BaseException as e: cases.append((label,"RAW %s: %s"%(type(e).__name__, str(e)[:150])))
case("deep json", lambda: aio.read_arrays(w("deep.json", b"["*100000+b"]"*100000)))
case("deep json dict", lambda: aio.read_arrays(w("deepd.json", b'{"a":'*50000+b"1"+b"}"*50000)))
case("json 5000 digits", lambda: aio.read_arrays(w("big.json", b"["+b"9"*5000+b"]")))
case("csv 200KiB field", lambda: aio.read_arrays(w("f.csv", b"1,"+b"1"*200000+b"\n")))
buf=io.BytesIO(); np.savez_compressed(buf, a=np.arange(1000.)); z=bytearray(buf.getvalue()); z[60:80]=b"\0"*20
case("npz corrupt zlib", lambda: aio.read_arrays(w("c.npz", bytes(z))))
zb=io.BytesIO(); 
with zipfile.ZipFile(zb,"w") as zf: zf.writestr("a.txt", "hello")
case("npz non-npy member", lambda: aio.read_arrays(w("m.npz", zb.getvalue())))
case("weights npz non-npy", lambda: W.load_state(w("m2.npz", zb.getvalue())))
def st(dtype, n=4, itemsize=2):
    h=json.dumps({"x":{"dtype":dtype,"shape":[n],"data_offsets":[0,n*itemsize]}}).encode()
    return struct.pack("<Q",len(h))+h+b"\0"*(n*itemsize)
for dt,isz in (("BF16",2),("F8_E4M3",1),("F8_E5M2",1)):
    case("st "+dt, lambda dt=dt,isz=isz: print(dt, aio.read_arrays(w("b.safetensors", st(dt,4,isz)))))
    case("weights st "+dt, lambda dt=dt,isz=isz: W.load_state(w("b.safetensors", st(dt,4,isz))))
    case("weights bytes st "+dt, lambda dt=dt,isz=isz: W.load_state(st(dt,4,isz)))
case("st bogus len", lambda: aio.read_arrays(w("h.safetensors", struct.pack("<Q",2**63)+b"{}")))
case("st bogus len weights", lambda: W.load_state(w("h.safetensors", struct.pack("<Q",2**63)+b"{}")))
case("st bogus len bytes", lambda: W.load_state(struct.pack("<Q",2**40)+b"{}"))
E=4
good={"in_proj_weight":np.zeros((12,4)),"in_proj_bias":np.zeros(12),"out_proj.weight":np.zeros((4,4)),"out_proj.bias":np.zeros(4)}
case("mha bias len", lambda: W.from_torch_mha({**good, "in_proj_bias":np.zeros(10)}))
case("mha 0d", lambda: W.from_torch_mha({**good, "out_proj.weight":np.float32(1)}))
case("mha 0d in_proj", lambda: W.from_torch_mha({**good, "in_proj_weight":np.float32(1)}))
case("mha missing out", lambda: W.from_torch_mha({k:v for k,v in good.items() if k!="out_proj.weight"}))
case("mha missing in", lambda: W.from_torch_mha({k:v for k,v in good.items() if k!="in_proj_weight"}))
case("to_attnkit {}", lambda: W.to_attnkit({}))
case("to_torch_mha {}", lambda: W.to_torch_mha({}))
case("to_hf_bert bad", lambda: W.to_torch_mha({"q_proj.weight":np.zeros(3)}))
import torch
class Foo: pass
torch.save({"a":Foo()}, d+"/p.pt")
case("pt pickle", lambda: W.load_state(d+"/p.pt"))
case("write unwritable dir", lambda: aio.write_array("/proc/x.npy", np.zeros(3)))
case("write root", lambda: aio.write_array("/x.npy", np.zeros(3)))
case("write ro file", lambda: (open(d+"/ro.npy","w").close(), os.chmod(d+"/ro.npy",0o444), aio.write_array(d+"/ro.npy", np.zeros(3))))
case("write dev full", lambda: aio.write_array("/dev/full", np.zeros(3), "npy"))
case("toml not utf8", lambda: load_config(w("c.toml", b"\xff\xfe[a]")))
case("toml deep", lambda: load_config(w("d.toml", b"a = "+b"["*100000+b"]"*100000)))
case("toml deep tables", lambda: load_config(w("d2.toml", b"a = "+b"{b="*5000+b"1"+b"}"*5000)))
for l,o in cases: print(f"{l:28s} {o}")
