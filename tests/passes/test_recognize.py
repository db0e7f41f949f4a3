"""Pattern recognition: decomposed framework code in, the op it means out."""
import math

import numpy as np

from ember.ir import parse
from ember.passes import fold_batch_norm, recognize
from irtext import assert_pass, run_pass

H = "graph g(%x: f32[n, 8]) -> (f32[n, 8]) {"
H16 = "graph g(%x: f32[n, 16]) -> (f32[n, 16]) {"


def test_gelu_erf_form():
    assert_pass(recognize, f"""{H}
      %h = const [0.5] : f32[]
      %k = const [{1 / math.sqrt(2)!r}] : f32[]
      %one = const [1.0] : f32[]
      %1 = mul(%x, %k) : f32[n, 8]
      %2 = erf(%1) : f32[n, 8]
      %3 = add(%2, %one) : f32[n, 8]
      %4 = mul(%x, %h) : f32[n, 8]
      %5 = mul(%4, %3) : f32[n, 8]
      return %5
    }}""", f"""{H}
      %1 = gelu(%x) {{approximate="none"}} : f32[n, 8]
      return %1
    }}""")


def test_gelu_tanh_form():
    assert_pass(recognize, f"""{H}
      %h = const [0.5] : f32[]
      %a = const [0.044715] : f32[]
      %s = const [{math.sqrt(2 / math.pi)!r}] : f32[]
      %one = const [1.0] : f32[]
      %1 = mul(%x, %x) : f32[n, 8]
      %2 = mul(%1, %x) : f32[n, 8]
      %3 = mul(%a, %2) : f32[n, 8]
      %4 = add(%x, %3) : f32[n, 8]
      %5 = mul(%4, %s) : f32[n, 8]
      %6 = tanh(%5) : f32[n, 8]
      %7 = add(%one, %6) : f32[n, 8]
      %8 = mul(%h, %x) : f32[n, 8]
      %9 = mul(%8, %7) : f32[n, 8]
      return %9
    }}""", f"""{H}
      %1 = gelu(%x) {{approximate="tanh"}} : f32[n, 8]
      return %1
    }}""")


def test_silu_and_softmax():
    assert_pass(recognize, f"""{H}
      %1 = sigmoid(%x) : f32[n, 8]
      %2 = mul(%1, %x) : f32[n, 8]
      %3 = max(%2) {{axes=[1], keepdims=true}} : f32[n, 1]
      %4 = sub(%2, %3) : f32[n, 8]
      %5 = exp(%4) : f32[n, 8]
      %6 = sum(%5) {{axes=[1], keepdims=true}} : f32[n, 1]
      %7 = div(%5, %6) : f32[n, 8]
      return %7
    }}""", f"""{H}
      %1 = silu(%x) : f32[n, 8]
      %2 = softmax(%1) {{axis=1}} : f32[n, 8]
      return %2
    }}""")


def test_layer_norm_with_affine():
    w = np.linspace(0.5, 1.5, 16).astype(np.float32)
    b = np.linspace(-1, 1, 16).astype(np.float32)
    assert_pass(recognize, f"""{H16}
      %w = const : f32[16]
      %b = const : f32[16]
      %eps = const [1e-05] : f32[]
      %1 = mean(%x) {{axes=[-1], keepdims=true}} : f32[n, 1]
      %2 = sub(%x, %1) : f32[n, 16]
      %3 = mul(%2, %2) : f32[n, 16]
      %4 = mean(%3) {{axes=[-1], keepdims=true}} : f32[n, 1]
      %5 = add(%4, %eps) : f32[n, 1]
      %6 = sqrt(%5) : f32[n, 1]
      %7 = div(%2, %6) : f32[n, 16]
      %16 = mul(%7, %w) : f32[n, 16]
      %9 = add(%16, %b) : f32[n, 16]
      return %9
    }}""", f"""{H16}
      %w = const : f32[16]
      %b = const : f32[16]
      %1 = layer_norm(%x, %w, %b) {{axis=1, eps=1e-05}} : f32[n, 16]
      return %1
    }}""", {"w": w, "b": b})


def test_rms_norm():
    w = np.linspace(0.5, 1.5, 16).astype(np.float32)
    assert_pass(recognize, f"""{H16}
      %w = const : f32[16]
      %eps = const [1e-06] : f32[]
      %1 = mul(%x, %x) : f32[n, 16]
      %2 = mean(%1) {{axes=[1], keepdims=true}} : f32[n, 1]
      %3 = add(%2, %eps) : f32[n, 1]
      %4 = rsqrt(%3) : f32[n, 1]
      %5 = mul(%x, %4) : f32[n, 16]
      %6 = mul(%w, %5) : f32[n, 16]
      return %6
    }}""", f"""{H16}
      %w = const : f32[16]
      %1 = rms_norm(%x, %w) {{axis=1, eps=1e-06}} : f32[n, 16]
      return %1
    }}""", {"w": w})


ATT = """graph g(%q: f32[b, 2, s, 4], %k: f32[b, 2, s, 4], %v: f32[b, 2, s, 4], %m: f32[b, 1, 1, s]) -> (f32[b, 2, s, 4]) {
  %c = const [0.5] : f32[]
  %1 = permute(%k) {perm=[0, 1, 3, 2]} : f32[b, 2, 4, s]
  %2 = reshape(%q) {shape=[2*b, s, 4]} : f32[2*b, s, 4]
  %3 = reshape(%1) {shape=[2*b, 4, s]} : f32[2*b, 4, s]
  %4 = matmul(%2, %3) : f32[2*b, s, s]
  %5 = reshape(%4) {shape=[b, 2, s, s]} : f32[b, 2, s, s]
  %6 = mul(%5, %c) : f32[b, 2, s, s]
  %7 = add(%6, %m) : f32[b, 2, s, s]
  %8 = softmax(%7) {axis=3} : f32[b, 2, s, s]
  %9 = matmul(%8, %v) : f32[b, 2, s, 4]
  return %9
}"""


def test_attention_through_batch_reshapes():
    assert_pass(recognize, ATT, """graph g(%q: f32[b, 2, s, 4], %k: f32[b, 2, s, 4], %v: f32[b, 2, s, 4], %m: f32[b, 1, 1, s]) -> (f32[b, 2, s, 4]) {
      %1 = attention(%q, %k, %v, %m) {scale=0.5, causal=false, safe=false} : f32[b, 2, s, 4]
      return %1
    }""")


def test_batch_norm_folds_into_conv():
    rng = np.random.default_rng(0)
    consts = {"w": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
              "mean": rng.standard_normal(3).astype(np.float32),
              "var": rng.uniform(0.5, 2, 3).astype(np.float32),
              "gamma": rng.standard_normal(3).astype(np.float32),
              "beta": rng.standard_normal(3).astype(np.float32)}
    text = run_pass(fold_batch_norm, """graph g(%x: f32[n, 2, 6, 6]) -> (f32[n, 3, 6, 6]) {
      %w = const : f32[3, 2, 3, 3]
      %mean = const : f32[3]
      %var = const : f32[3]
      %gamma = const : f32[3]
      %beta = const : f32[3]
      %1 = conv2d(%x, %w) {stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1} : f32[n, 3, 6, 6]
      %2 = batch_norm(%1, %mean, %var, %gamma, %beta) {eps=1e-05} : f32[n, 3, 6, 6]
      return %2
    }""", consts)
    g = parse(text, {})
    assert [n.op for n in g.nodes] == ["conv2d"] and len(g.nodes[0].inputs) == 3
