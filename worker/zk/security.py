"""Security of a parameter set: the conjectured figure, the provable (Johnson-bound) figure, and the floor.

Conjectured (the ethSTARK conjecture as Winterfell and Plonky2 state it):

    bits = min(q_eff * log2(blowup) + grinding, 128 - log2(m) - 1) - 1,   capped at 128 (hash collisions)

with q_eff = min(queries, m/4) (there are only m/4 distinct query cosets) and m = steps * blowup. It assumes
FRI is sound up to the code's capacity, which IACR ePrint 2025/2010 and 2025/2046 disproved for Reed-Solomon
codes near capacity: treat it as an estimate of the best known attack, not a proof.

Provable (the round-by-round bounds of ethSTARK section 5 / ePrint 2022/1216 theorem 8, with the BCIKS20
proximity-gap theorem inside the Johnson bound), maximised over the multiplicity parameter mu >= 3:

    rho   = 1/blowup,  |F| = p^2 (the extension field),  alpha = sqrt(rho) (1 + 1/(2 mu)),
    L     = (mu + 1/2) / sqrt(rho)                                  (list size)
    e_ALI   = L / |F|                                               (independent constraint coefficients)
    e_DEEP  = L^2 (D + 2 n) / (|F| - m - n)                         (D: degree bound of the composition)
    e_batch = (mu + 1/2)^7 m^2 / (3 rho^1.5 |F|)                    (DEEP quotients, independent coefficients)
    e_fold  = sum over FRI rounds (arity - 1) (mu + 1/2)^7 m_i^2 / (3 rho^1.5 |F|)   (m_i: round i's domain)
    e_query = alpha^queries * 2^-grinding
    bits  = floor(-log2(e_ALI + e_DEEP + e_batch + e_fold + e_query)),   capped at 128.

At the defaults (blowup 8, 30 queries, 16 grinding bits) the queries dominate: ~1.4 bits a query, so about
58 provable bits against 105 conjectured.

The floor (MIN_SECURITY_BITS, conjectured) is enforced by the prover, the spec validation of zk.prove jobs,
the verifier and zk.verify: nothing below it is proven, accepted or called valid.
"""

from __future__ import annotations

import math
from functools import lru_cache

EXT_FIELD_BITS = 128
HASH_COLLISION_BITS = 128  # BLAKE2s-256
MIN_SECURITY_BITS = 100
FRI_ARITY = 4


def conjectured_bits(blowup: int, queries: int, grinding: int, lde_size: int) -> int:
    effective = min(queries, lde_size // FRI_ARITY)
    query_bits = effective * int(math.log2(blowup)) + grinding
    field_bits = EXT_FIELD_BITS - int(math.log2(lde_size)) - 1
    return max(0, min(min(query_bits, field_bits) - 1, HASH_COLLISION_BITS))


@lru_cache(maxsize=256)
def provable_bits(blowup: int, queries: int, grinding: int, steps: int, comp_degree: int,
                  fri_domains: tuple[int, ...]) -> int:
    """`comp_degree`: degree bound of the committed composition; `fri_domains`: the domain size of each
    folding round's input."""
    field = 2.0**EXT_FIELD_BITS
    rho = 1.0 / blowup
    m, n = steps * blowup, steps
    best = 0.0
    for mu in range(3, 129):
        alpha = math.sqrt(rho) * (1 + 1 / (2 * mu))
        if alpha >= 1:
            continue
        lsize = (mu + 0.5) / math.sqrt(rho)
        gap = (mu + 0.5) ** 7 / (3 * rho**1.5)
        e_ali = lsize / field
        e_deep = lsize**2 * (comp_degree + 2 * n) / (field - m - n)
        e_batch = gap * m * m / field
        e_fold = sum((FRI_ARITY - 1) * gap * d * d / field for d in fri_domains)
        e_query = math.exp(queries * math.log(alpha)) * 2.0**-grinding
        bits = -math.log2(e_ali + e_deep + e_batch + e_fold + e_query)
        best = max(best, bits)
    return int(min(math.floor(best), HASH_COLLISION_BITS))
