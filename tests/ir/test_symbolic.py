from ember.ir.symbolic import evaluate, floordiv, mod, parse_dim, prod, sym, to_c

b, s = sym("batch"), sym("seq")


def test_arithmetic_normalizes():
    assert b + 0 == b and b * 1 == b and b - b == 0 and isinstance(b - b, int)
    assert (b + 1) * (b - 1) == b * b - 1
    assert 2 * b * s == s * b * 2
    assert prod([b, s, 12]) // 12 == b * s
    assert prod([b, s, 12]) // (b * s) == 12
    assert mod(b * 6, 3) == 0 and mod(7, 3) == 1


def test_opaque_division_and_eval():
    q = floordiv(b * s + 3, 12)
    assert q != b * s and evaluate(q, {"batch": 2, "seq": 10}) == (2 * 10 + 3) // 12
    assert evaluate(mod(b, 4), {"batch": 11}) == 3


def test_text_round_trip():
    for d in [b, b * s * 12, b - 1, floordiv(b * s + 3, 12) + 1, mod(s, 5) * b, 7]:
        assert parse_dim(str(d)) == d


def test_c_printing():
    assert to_c(b * 4, lambda n: f"s_{n}") == "(4*s_batch)"
    assert to_c(floordiv(b + 1, 2), lambda n: n) == "(((batch + 1) / 2))"
