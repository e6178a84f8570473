//! Distribution functions the intervals and tests need, written from the textbook definitions
//! (Abramowitz & Stegun; Press et al., *Numerical Recipes*, 3rd ed., §6.1–6.4 and §14.3):
//! log-gamma (Lanczos), the regularised incomplete gamma and beta functions (series and
//! Lentz continued fractions), and from them the normal, Student t, chi-square and Kolmogorov
//! distributions. Accuracy is close to double precision over the ranges the monitor uses; the
//! reference values in the tests come from SciPy.

use std::f64::consts::{LN_10, PI, SQRT_2};

/// Relative precision at which the series and continued fractions stop.
const EPS: f64 = 1e-16;
/// Guard against division by zero inside Lentz's method.
const TINY: f64 = 1e-300;
/// Iteration cap for the series and continued fractions (never reached for sane arguments).
const MAX_ITER: usize = 10_000;

/// Lanczos coefficients for g = 7, n = 9.
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// Natural logarithm of the gamma function, for `x > 0`.
pub(crate) fn ln_gamma(x: f64) -> f64 {
    if x < 0.5 {
        // Reflection keeps the Lanczos sum in its accurate range.
        (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x)
    } else {
        let x = x - 1.0;
        let mut sum = LANCZOS[0];
        for (i, c) in LANCZOS.iter().enumerate().skip(1) {
            sum += c / (x + i as f64);
        }
        let t = x + 7.5;
        0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
    }
}

/// ln of the prefactor `e^-x x^a / Γ(a)` shared by both branches of the incomplete gamma.
fn gamma_prefactor_ln(a: f64, x: f64) -> f64 {
    -x + a * x.ln() - ln_gamma(a)
}

/// Series for the lower regularised incomplete gamma P(a, x), good for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut del = 1.0 / a;
    let mut sum = del;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * EPS {
            break;
        }
    }
    sum * gamma_prefactor_ln(a, x).exp()
}

/// Continued fraction for Q(a, x) without its prefactor, good for x ≥ a + 1.
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Natural log of the upper regularised incomplete gamma Q(a, x) = Γ(a, x)/Γ(a), accurate
/// far into the tail where Q itself underflows.
pub(crate) fn ln_gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if x < a + 1.0 {
        (-gamma_p_series(a, x)).ln_1p()
    } else {
        gamma_prefactor_ln(a, x) + gamma_q_fraction(a, x).ln()
    }
}

/// Upper regularised incomplete gamma Q(a, x).
pub(crate) fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        1.0
    } else if x < a + 1.0 {
        1.0 - gamma_p_series(a, x)
    } else {
        gamma_prefactor_ln(a, x).exp() * gamma_q_fraction(a, x)
    }
}

/// Complementary error function, via erfc(z) = Q(1/2, z²).
pub(crate) fn erfc(z: f64) -> f64 {
    if z >= 0.0 {
        gamma_q(0.5, z * z)
    } else {
        2.0 - gamma_q(0.5, z * z)
    }
}

/// Standard normal cumulative distribution function Φ(x).
pub(crate) fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// Standard normal quantile Φ⁻¹(p) for 0 < p < 1: Acklam's rational approximation polished by
/// one Halley step against [`normal_cdf`].
pub(crate) fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    const P_LOW: f64 = 0.024_25;

    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    };
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// Continued fraction of the incomplete beta function (Numerical Recipes `betacf`).
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// Regularised incomplete beta function I_x(a, b).
pub(crate) fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// Student t cumulative distribution function with `df` degrees of freedom.
pub(crate) fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * beta_inc(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Student t quantile for 0 < p < 1, by bracketing and bisection on [`t_cdf`].
pub(crate) fn t_quantile(p: f64, df: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    let mut lo = 0.0;
    let mut hi = 1.0;
    while t_cdf(hi, df) < p && hi < 1e300 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..2_000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Natural log of the chi-square survival function P(X ≥ x) with `df` degrees of freedom.
pub(crate) fn ln_chi2_sf(x: f64, df: f64) -> f64 {
    ln_gamma_q(df / 2.0, x / 2.0)
}

/// Natural log of the Kolmogorov distribution's survival function
/// Q_KS(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}, using the theta-function form for small λ.
pub(crate) fn ln_kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda < 1.18 {
        let y = (-PI * PI / (8.0 * lambda * lambda)).exp();
        let cdf = (2.0 * PI).sqrt() / lambda * (y + y.powi(9) + y.powi(25) + y.powi(49));
        (-cdf).ln_1p()
    } else {
        let x = (-2.0 * lambda * lambda).exp();
        std::f64::consts::LN_2 - 2.0 * lambda * lambda + (-x.powi(3) + x.powi(8) - x.powi(15)).ln_1p()
    }
}

/// Converts a natural-log p-value into a surprise −log10(p), the scale the p-value tests
/// report so that a larger statistic always means more drift.
pub(crate) fn surprise(ln_p: f64) -> f64 {
    (-ln_p / LN_10).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        let tol = rel * want.abs().max(1e-300);
        assert!((got - want).abs() <= tol, "got {got:e}, want {want:e} (rel tol {rel:e})");
    }

    // Reference values from SciPy 1.x:
    //   from scipy import special, stats
    //   special.gammaln(0.5), special.gammaln(10.3), special.gammaincc(3, 2.5),
    //   stats.norm.ppf([0.975, 0.995, 1e-10]), stats.t.ppf([0.975, 0.995], [9, 2]),
    //   stats.chi2.sf(30, 4), stats.chi2.logsf(2000, 10), stats.kstwobign.sf([0.5, 1.0, 1.36, 3.0])
    #[test]
    fn ln_gamma_matches_known_values() {
        close(ln_gamma(0.5), 0.5 * PI.ln(), 1e-14);
        close(ln_gamma(1.0).abs() + 1.0, 1.0, 1e-14);
        close(ln_gamma(10.3), 13.482_036_786_138_359, 1e-13);
        close(ln_gamma(5.0), 24f64.ln(), 1e-14);
    }

    #[test]
    fn incomplete_gamma_matches_closed_form() {
        // Q(3, x) = e^-x (1 + x + x²/2)
        let x: f64 = 2.5;
        close(gamma_q(3.0, x), (-x).exp() * (1.0 + x + x * x / 2.0), 1e-13);
        let x: f64 = 40.0;
        close(ln_gamma_q(3.0, x), -x + (1.0 + x + x * x / 2.0).ln(), 1e-13);
    }

    #[test]
    fn normal_quantile_round_trips() {
        close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-14);
        close(normal_quantile(0.995), 2.575_829_303_548_900_4, 1e-14);
        close(normal_quantile(1e-10), -6.361_340_902_404_056, 1e-12);
        close(normal_cdf(1.0), 0.841_344_746_068_542_9, 1e-14);
    }

    #[test]
    fn t_quantile_matches_tables() {
        close(t_quantile(0.975, 9.0), 2.262_157_162_798_205, 1e-12);
        close(t_quantile(0.995, 2.0), 9.924_843_200_918_287, 1e-12);
        close(t_quantile(0.025, 29.0), -2.045_229_642_132_704, 1e-12);
        close(t_quantile(0.975, 1.0), 12.706_204_736_174_694, 1e-12);
    }

    #[test]
    fn chi2_and_kolmogorov_tails() {
        // chi2.sf(30, 4) = e^-15 (1 + 15)
        close(ln_chi2_sf(30.0, 4.0), -15.0 + 16f64.ln(), 1e-13);
        close(ln_kolmogorov_sf(0.5).exp(), 0.963_945_243_664_875_1, 1e-12);
        close(ln_kolmogorov_sf(1.0).exp(), 0.269_999_671_677_354_56, 1e-12);
        close(ln_kolmogorov_sf(1.36).exp(), 0.049_485_876_755_377_876, 1e-11);
        close(ln_kolmogorov_sf(3.0).exp(), 3.045_995_948_942_526e-8, 1e-11);
    }
}
