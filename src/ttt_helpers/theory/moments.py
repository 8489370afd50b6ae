"""Gaussian moments with SymPy (Isserlis / Wick).

The workhorse is :func:`expect_gaussian`: the exact expectation of a polynomial in jointly Gaussian,
zero-mean variables. For i.i.d. standard normal variables a monomial ``prod_i z_i^{p_i}`` has expectation
``prod_i (p_i - 1)!!`` (zero if any ``p_i`` is odd) -- Isserlis' theorem counts exactly these pairings.
A general covariance ``Sigma = L L^T`` is handled by the substitution ``x = L z``.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "standard_normal_moment",
    "expect_gaussian",
    "symbolic_gaussian_vector",
    "chi2_moment",
    "expect_independent",
    "wick_expectation",
    "tensor_product",
    "fresh_label",
    "context_vector_u",
    "inner_u_u",
    "inner_beta_u",
]


def standard_normal_moment(p: int) -> int:
    """``E[z^p]`` for ``z ~ N(0, 1)``: ``(p-1)!!`` for even ``p``, ``0`` for odd ``p``."""
    if not isinstance(p, int) or p < 0:
        raise ValueError(f"p must be a non-negative integer, got {p!r}")
    return 0 if p % 2 else int(sp.factorial2(p - 1))


def expect_gaussian(expr, variables, cov=None):
    """Exact expectation of a polynomial ``expr`` in zero-mean jointly Gaussian ``variables``.

    Parameters
    ----------
    expr : sympy expression (or Matrix, handled entrywise)
        Polynomial in ``variables``; other symbols are treated as constants.
    variables : sequence of sympy.Symbol
        The Gaussian variables.
    cov : sympy.Matrix, optional
        Their covariance (symbolic entries allowed); identity if omitted. When given, it must be
        positive semi-definite; its Cholesky factor is taken symbolically.

    Returns
    -------
    sympy expression (or Matrix)
    """
    variables = list(variables)
    if not variables:
        raise ValueError("variables must be a non-empty sequence of sympy symbols")
    if isinstance(expr, sp.MatrixBase):
        return expr.applyfunc(lambda e: expect_gaussian(e, variables, cov))
    expr = sp.sympify(expr)
    if cov is not None:
        cov = sp.Matrix(cov)
        if cov.shape != (len(variables), len(variables)):
            raise ValueError(f"cov must have shape {(len(variables),) * 2}, got {cov.shape}")
        L = cov.cholesky(hermitian=False)
        zs = sp.symbols(f"_z0:{len(variables)}")
        sub = {v: sum(L[i, j] * zs[j] for j in range(len(variables))) for i, v in enumerate(variables)}
        return sp.simplify(expect_gaussian(expr.xreplace(sub), zs))
    poly = sp.Poly(sp.expand(expr), *variables)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        m = 1
        for p in powers:
            m *= standard_normal_moment(int(p))
            if m == 0:
                break
        if m:
            total += coeff * m
    return sp.expand(total)


def symbolic_gaussian_vector(name: str, d: int):
    """A ``d x 1`` SymPy column vector of symbols ``name_1 ... name_d`` (real)."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return sp.Matrix(d, 1, lambda i, _: sp.Symbol(f"{name}_{i + 1}", real=True))


# ---------------------------------------------------------------------------------------------------------
# Scalar moments used by the isotropic analysis
# ---------------------------------------------------------------------------------------------------------


def chi2_moment(dof, m: int):
    """``E[q^m]`` for ``q ~ chi^2_dof``: ``dof (dof+2) ... (dof+2m-2)`` (``dof`` may be a SymPy symbol)."""
    if not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be a non-negative integer, got {m!r}")
    dof = sp.sympify(dof)
    out = sp.Integer(1)
    for i in range(m):
        out *= dof + 2 * i
    return out


def expect_independent(expr, moments: dict):
    """Exact expectation of a polynomial in independent random variables, given their moment functions.

    Parameters
    ----------
    expr : sympy expression
        Polynomial in the keys of ``moments``; other symbols are constants.
    moments : dict {sympy.Symbol: callable}
        ``moments[v](p)`` returns ``E[v^p]`` (a SymPy expression).

    Returns
    -------
    sympy expression (expanded)
    """
    if not moments:
        raise ValueError("moments must map at least one symbol to its moment function")
    variables = list(moments)
    poly = sp.Poly(sp.expand(expr), *variables)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        m = sp.Integer(1)
        for v, p in zip(variables, powers):
            if p:
                m *= moments[v](int(p))
                if m == 0:
                    break
        if m != 0:
            total += coeff * m
    return sp.expand(total)


# ---------------------------------------------------------------------------------------------------------
# Wick / Isserlis contraction of tensor networks with symbolic dimensions
# ---------------------------------------------------------------------------------------------------------
#
# A *term* is ``(coefficient, factors)``; a factor is ``(name, labels)`` with ``labels`` a tuple of index
# labels. An index label is a pair ``(dim, tag)``: ``dim`` is the SymPy symbol of the dimension it runs
# over and ``tag`` any hashable. Repeated labels are summed (Einstein convention); every label occurs at
# most twice in a term, and a label that occurs once is *free*.
#
# Factor names are either Gaussian *families* (all entries i.i.d. N(0, variance) and independent of
# the other families, e.g. the n x d data matrix ``X`` or the noise vector ``xi``) or deterministic
# vectors (one label) / symmetric matrices (two labels). Isserlis' theorem: the expectation of a product
# of Gaussian entries is the sum over pairings of products of covariances, and a pair
# ``G[l1..] G[l1'..]`` of the same family contributes ``variance * prod_p delta(l_p, l_p')``. After the
# deltas are applied, every connected component of the network is a closed loop (giving the dimension,
# or ``tr(M1 M2 ...)`` when deterministic matrices sit on it) or an open chain between two vectors
# (giving ``v^T M1 ... w``) or ending at free labels (giving ``delta`` / vector entries).


def _matchings(items):
    """All perfect matchings of a list (as lists of pairs)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for j in range(len(rest)):
        pair = (first, rest[j])
        for m in _matchings(rest[:j] + rest[j + 1:]):
            yield [pair] + m


def _canon_chain(names):
    """Canonical name of a chain of symmetric matrices between two vectors (reversal symmetric)."""
    fwd = tuple(names)
    return min(fwd, fwd[::-1])


def _canon_cycle(names):
    """Canonical name of a trace of symmetric matrices (cyclic and reversal symmetric)."""
    names = tuple(names)
    if not names:
        return names
    cands = []
    for seq in (names, names[::-1]):
        for i in range(len(seq)):
            cands.append(seq[i:] + seq[:i])
    return min(cands)


def _evaluate_pairing(factors, pairs, gaussian):
    """Value of one Wick pairing of a term (see the module notes)."""
    # slot = (factor index, position); adjacency through labels and through pair / matrix edges
    label_slots: dict = {}
    for f, (_, labels) in enumerate(factors):
        for p, lab in enumerate(labels):
            label_slots.setdefault(lab, []).append((f, p))
    for lab, slots in label_slots.items():
        if len(slots) > 2:
            raise ValueError(f"index label {lab!r} occurs {len(slots)} times; at most twice is allowed")
    other: dict = {}  # slot -> (neighbour slot, matrix name or None), the non-label edge
    value = sp.Integer(1)
    for f1, f2 in pairs:
        name, l1 = factors[f1]
        _, l2 = factors[f2]
        value *= gaussian[name]
        for p in range(len(l1)):
            if l1[p][0] != l2[p][0]:
                return sp.Integer(0)  # different dimensions never pair (well-formed input avoids this)
            other[(f1, p)] = ((f2, p), None)
            other[(f2, p)] = ((f1, p), None)
    for f, (name, labels) in enumerate(factors):
        if name in gaussian:
            continue
        if len(labels) == 2:
            other[(f, 0)] = ((f, 1), name)
            other[(f, 1)] = ((f, 0), name)
        elif len(labels) != 1:
            raise ValueError(f"deterministic factor {name!r} must have 1 or 2 labels, got {len(labels)}")

    def label_partner(slot):
        lab = factors[slot[0]][1][slot[1]]
        s = label_slots[lab]
        if len(s) == 1:
            return None
        return s[1] if s[0] == slot else s[0]

    seen = set()
    free_parts = []

    def endpoint_symbol(slot):
        """What an open end of a chain is: a vector name, or a free label."""
        name, labels = factors[slot[0]]
        if name not in gaussian and len(labels) == 1:
            return ("vec", name)
        return ("free", labels[slot[1]])

    slots_all = [(f, p) for f, (_, labels) in enumerate(factors) for p in range(len(labels))]
    for start in slots_all:
        if start in seen:
            continue
        # walk to one end of the component (or around a cycle)
        # a slot is an end if it lacks a label partner or lacks an 'other' edge
        comp_start = start
        cur, via = start, "label"
        is_cycle = False
        visited_walk = {start}
        while True:
            nxt = label_partner(cur) if via == "label" else (other.get(cur, (None,))[0])
            if nxt is None:
                break
            if nxt == start:
                is_cycle = True
                break
            if nxt in visited_walk:
                is_cycle = True
                break
            visited_walk.add(nxt)
            cur = nxt
            via = "other" if via == "label" else "label"
        if is_cycle:
            comp_start, first_via = start, "label"
        else:
            comp_start = cur
            first_via = "other" if via == "label" else "label"
        # traverse from comp_start, collecting matrices in order
        mats = []
        cur, via = comp_start, first_via
        seen.add(cur)
        dim = factors[cur[0]][1][cur[1]][0]
        end = None
        while True:
            if via == "label":
                nxt = label_partner(cur)
            else:
                edge = other.get(cur)
                nxt, mname = (edge if edge is not None else (None, None))
                if nxt is not None and mname is not None:
                    mats.append(mname)
            if nxt is None or (is_cycle and nxt == comp_start):
                end = cur
                break
            seen.add(nxt)
            cur = nxt
            via = "other" if via == "label" else "label"
        if is_cycle:
            cyc = _canon_cycle(mats)
            value *= dim if not cyc else sp.Symbol("tr(" + "*".join(cyc) + ")")
            continue
        a, b = endpoint_symbol(comp_start), endpoint_symbol(end)
        if a[0] == "vec" and b[0] == "vec":
            chain = _canon_chain((a[1],) + tuple(mats) + (b[1],))
            value *= sp.Symbol("<" + ",".join(chain) + ">")
        else:
            free_parts.append((a, tuple(mats), b))
    for a, mats, b in free_parts:
        value *= _free_symbol(a, mats, b)
    return value


def _label_str(lab):
    return f"{lab[1]}"


def _free_symbol(a, mats, b):
    """Symbol for an open chain with at least one free end: ``delta[a,b]``, ``(M v)[a]``, ``(M)[a,b]``."""
    if a[0] == "vec":
        a, b, mats = b, a, mats[::-1]
    inner = "*".join(mats)
    if b[0] == "vec":
        body = (inner + "*" if inner else "") + b[1]
        return sp.Symbol(f"({body})[{_label_str(a[1])}]")
    la, lb = sorted([_label_str(a[1]), _label_str(b[1])])
    if not inner:
        return sp.Symbol(f"delta[{la},{lb}]")
    return sp.Symbol(f"({inner})[{la},{lb}]")


def wick_expectation(terms, gaussian: dict):
    """Exact expectation of a sum of tensor-network terms in independent Gaussian families (Isserlis).

    Parameters
    ----------
    terms : list of (coefficient, factors)
        ``factors`` is a sequence of ``(name, labels)``; see the notes above :func:`wick_expectation`
        in the source. Build terms with :func:`tensor_product` or by hand.
    gaussian : dict {name: variance}
        The Gaussian families; every other factor name is a deterministic vector or symmetric matrix.

    Returns
    -------
    sympy expression
        Polynomial in the dimension symbols, the variances and symbols ``<v,M,...,w>`` (chains
        ``v^T M ... w``), ``tr(M*...)`` (traces), ``delta[a,b]`` and ``(M*v)[a]`` (free indices).

    Examples
    --------
    ``E[tr((X^T X)^2)] = n d (n + d + 1)`` for an ``n x d`` standard Gaussian ``X``:

    >>> import sympy as sp
    >>> n, d = sp.symbols("n d")
    >>> i, j, a, b = (n, "i"), (n, "j"), (d, "a"), (d, "b")
    >>> term = (1, [("X", (i, a)), ("X", (i, b)), ("X", (j, b)), ("X", (j, a))])
    >>> sp.factor(wick_expectation([term], {"X": 1}))
    d*n*(d + n + 1)
    """
    if not isinstance(gaussian, dict) or not gaussian:
        raise ValueError("gaussian must be a non-empty dict {family name: variance}")
    total = sp.Integer(0)
    for coeff, factors in terms:
        factors = list(factors)
        by_family: dict = {}
        for f, (name, _) in enumerate(factors):
            if name in gaussian:
                by_family.setdefault(name, []).append(f)
        if any(len(v) % 2 for v in by_family.values()):
            continue
        fam_matchings = [list(_matchings(v)) for v in by_family.values()]
        acc = sp.Integer(0)
        for combo in _product(fam_matchings):
            pairs = [p for m in combo for p in m]
            acc += _evaluate_pairing(factors, pairs, gaussian)
        total += sp.sympify(coeff) * acc
    return sp.expand(total)


def _product(lists):
    if not lists:
        yield []
        return
    for head in lists[0]:
        for tail in _product(lists[1:]):
            yield [head] + tail


_fresh_counter = [0]


def fresh_label(dim, prefix: str = "s"):
    """A new summation label over dimension ``dim`` (unique within the session)."""
    _fresh_counter[0] += 1
    return (dim, f"{prefix}{_fresh_counter[0]}")


def _rename_internal(terms):
    """Copy of a sum of terms with its summed (internal) labels replaced by fresh ones; free labels kept."""
    mapping: dict = {}
    out = []
    for coeff, factors in terms:
        counts: dict = {}
        for _, labels in factors:
            for lab in labels:
                counts[lab] = counts.get(lab, 0) + 1
        for lab, cnt in counts.items():
            if cnt == 2 and lab not in mapping:
                mapping[lab] = fresh_label(lab[0], "r")
        out.append((coeff, [(name, tuple(mapping.get(lab, lab) if counts[lab] == 2 else lab for lab in labels))
                            for name, labels in factors]))
    return out


def tensor_product(*sums):
    """Product of sums of terms ``[(c, factors), ...]``, expanded.

    The summed labels of each operand are renamed first, so ``tensor_product(s, s)`` is the square of
    ``s`` (two copies with independent summation indices, the same Gaussian families); free labels are
    kept, so they contract across operands.
    """
    out = [(sp.Integer(1), [])]
    for s in sums:
        s = _rename_internal(s)
        out = [(c1 * c2, list(f1) + list(f2)) for c1, f1 in out for c2, f2 in s]
    return out


def context_vector_u(label, n, d, beta: str = "beta", X: str = "X", xi: str = "xi"):
    """The terms of ``u[label] = (X^T X beta + X^T xi)[label]`` with fresh internal labels.

    ``X`` is the ``n x d`` context (family ``X``), ``xi`` the noise (family ``xi``), ``beta`` a fixed
    vector. Two calls give two copies of the SAME ``u`` (same families), as Wick's theorem requires.
    """
    i, b = fresh_label(n, "i"), fresh_label(d, "a")
    i2 = fresh_label(n, "i")
    return [
        (sp.Integer(1), [(X, (i, label)), (X, (i, b)), (beta, (b,))]),
        (sp.Integer(1), [(X, (i2, label)), (xi, (i2,))]),
    ]


def inner_u_u(n, d, beta: str = "beta"):
    """Terms of ``u^T u`` (see :func:`context_vector_u`)."""
    a = fresh_label(d, "a")
    return tensor_product(context_vector_u(a, n, d, beta), context_vector_u(a, n, d, beta))


def inner_beta_u(n, d, beta: str = "beta"):
    """Terms of ``beta^T u``."""
    a = fresh_label(d, "a")
    return tensor_product([(sp.Integer(1), [(beta, (a,))])], context_vector_u(a, n, d, beta))
