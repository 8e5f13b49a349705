// safeops fused CPU kernel: the correctly rounded sum (or mean) of each row.
//
// SafeopsExactSum: x [rows, n] (half, bfloat16, float, double) -> [rows] (or [outer, n, inner]
// -> [outer, inner], the reduced axis in the middle, read in place): each row's exact
// sum (attr mean: exact sum / n) rounded once, to nearest-even, to x's dtype; NaN if a term
// is NaN or both infinities occur, else +-inf if one occurs; a sum of only -0.0 is -0.0; the
// empty sum is +0.0 (the empty mean NaN); overflow to inf as round-to-nearest gives;
// subnormal results exact. These are the bits of the pure-TF exact accumulator
// (safeops/_core/exact.py), which XLA and GPU graphs run.
//
// Two passes, the second only for the rows the first cannot decide:
//
// 1. Filter. Every element is widened exactly to double. float64 terms are added by TwoSum
//    into one of kLanes (s, c) lanes, with sum |x| alongside (Ogita-Rump-Oishi Sum2);
//    float32/half/bfloat16 terms are first summed kChain at a time in plain double (each such
//    sum errs by at most gamma_{kChain-1} times its terms' sum |x|), and those sums go by
//    TwoSum into the lanes. The lanes of a block of at most kBlock elements, then blocks
//    and segments, are merged by TwoSum; the result is a double-double s + c and a rigorous
//    bound E >= |s + c - S|:
//      E = 2 (0.51 u^2 sum_blocks k (k + 1) A_block + u sum_merges |m|
//             + gamma_{kChain-1} sum_narrow A_block),
//    u = 2^-53, k the longest lane of a block and A_block its sum |x| (within a lane, the
//    i-th addition to c errs by at most u |c_i| <= 1.02 i u^2 A_lane), m every rounded
//    addition of the merges (a-posteriori: each errs by at most u |m|); the factor 2 covers
//    the rounding of the bound itself. The candidate r (s + c rounded to the dtype) is the
//    correctly rounded sum when [s + c - E, s + c + E] lies strictly between the midpoints
//    around r: every comparison is exact (Sterbenz differences, monotone rounding). The mean
//    is certified the same way from q + t ~ (s + c) / n (q = fl(s / n), the remainder exact
//    by FMA), with the bound E / n + 3 u |t| (and 2^-1070 for a subnormal quotient).
//    Results that are zero, tiny (below twice the dtype's smallest normal), in the top
//    binade or not finite never certify: pass 2 decides them.
// 2. Exact. Integer mantissas are summed per exponent in int64 bins (float64's 53-bit
//    mantissa split into 26 + 27 bits), so up to 2^36 terms cannot overflow a bin; the bins
//    are folded into 32-bit digits (digit k weighs 2^(32 k + emin_sub)), carry-propagated to
//    two's complement, and the magnitude is rounded once from its bits; the mean divides the
//    exact integer by n first (long division, the remainder kept as a sticky bit).
//
// The arithmetic runs with subnormals not flushed (TensorFlow's CPU threads flush them) and
// is compiled with -ffp-contract=off: TwoSum must run as written. The partition of a row into
// blocks and segments depends on the shape only, and a correctly rounded result on the
// values only: every thread count gives the same bits.
//
// Memory: besides its output, at most kSplitBudget partial sums (five doubles each) and
// kExactBudget exact segment states (J + 5 int64 each); the exact bins (at most 2^11 + 27
// int64) are on the stack of the thread that runs a segment. The input's rank and sizes are
// checked before it is read.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/denormal.h"

#include "common.h"

namespace safeops {
namespace {

using ::safeops_native::ParallelFor;
using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int kLanes = 32;                  // independent accumulators of the filter
constexpr int64_t kBlock = 1 << 15;         // elements per block
constexpr int64_t kMaxSplit = 64;           // most segments a row is cut into
constexpr int64_t kSplitBudget = 1 << 16;   // most filter partials held at once
constexpr int64_t kExactBudget = 1 << 12;   // most exact segment states held at once
constexpr int64_t kExactChunk = int64_t{1} << 32;  // terms per bin fill (2^36 are safe)
constexpr int64_t kMaxFilter = int64_t{1} << 40;   // longer rows: the exact pass only
constexpr double kU = 0x1p-53;
constexpr uint64_t kMask32 = 0xFFFFFFFFull;

typedef unsigned __int128 u128;

// ---------------------------------------------------------------------------- formats

template <typename T>
struct Fmt;
template <>
struct Fmt<double> {
  typedef uint64_t Bits;
  static constexpr int kP = 53, kEbits = 11, kWidth = 64;
};
template <>
struct Fmt<float> {
  typedef uint32_t Bits;
  static constexpr int kP = 24, kEbits = 8, kWidth = 32;
};
template <>
struct Fmt<Eigen::half> {
  typedef uint16_t Bits;
  static constexpr int kP = 11, kEbits = 5, kWidth = 16;
};
template <>
struct Fmt<Eigen::bfloat16> {
  typedef uint16_t Bits;
  static constexpr int kP = 8, kEbits = 8, kWidth = 16;
};

// Derived parameters: a finite value is m * 2^(pos + kEminSub), 0 <= pos <= kPosMax.
template <typename T>
struct Params {
  static constexpr int kP = Fmt<T>::kP, kEbits = Fmt<T>::kEbits, kWidth = Fmt<T>::kWidth;
  static constexpr int kBias = (1 << (kEbits - 1)) - 1;
  static constexpr int kEminSub = 1 - kBias - (kP - 1);
  static constexpr int kPosMax = (1 << kEbits) - 3;
  static constexpr bool kSplit = kP > 32;  // float64: mantissa in two bins (26 + 27 bits)
  static constexpr int kHiShift = 26;
  static constexpr int kBins = kPosMax + 1 + (kSplit ? kHiShift : 0);
  // digits: the sum of up to 2^63 terms of the largest magnitude, and a sign digit
  static constexpr int kDigits = (kPosMax + kP + 64) / 32 + 2;
  static constexpr uint64_t kInfBits = ((uint64_t{1} << kEbits) - 1) << (kP - 1);
  static constexpr uint64_t kNanBits = kInfBits | (uint64_t{1} << (kP - 2));
  static constexpr uint64_t kSignBit = uint64_t{1} << (kWidth - 1);
  // certification range (as doubles): twice the smallest normal up to the top binade
  static double MinCert() { return std::ldexp(1.0, 2 - kBias); }
  static double MaxCert() { return std::ldexp(1.0, kBias); }
};

template <typename T>
inline typename Fmt<T>::Bits BitsOf(const T& v) {
  typename Fmt<T>::Bits b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

template <typename T>
inline T FromBits(uint64_t bits) {
  const typename Fmt<T>::Bits b = static_cast<typename Fmt<T>::Bits>(bits);
  T v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

template <typename T>
inline double ToDouble(const T& v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double ToDouble<double>(const double& v) {
  return v;
}
template <>
inline double ToDouble<float>(const float& v) {
  return static_cast<double>(v);
}

// ---------------------------------------------------------------------------- pass 1: filter

inline void TwoSum(double a, double b, double* s, double* e) {
  const double x = a + b;
  const double z = x - a;
  *e = (a - (x - z)) + (b - z);
  *s = x;
}

// A double-double s + c of part of a row with what bounds its error (see the file comment).
struct Partial {
  double s = -0.0;    // -0.0: a sum of only -0.0 stays -0.0
  double c = 0.0;
  double a = 0.0;     // sum |x|
  double err = 0.0;   // sum of |m| over the rounded additions of the merges
  double chain = 0.0;  // sum over blocks of k (k + 1) A_block
};

// Adds the double-double (s, c) into p; each of its two rounded additions errs by at most
// u times its result's magnitude.
inline void MergeDW(Partial* p, double s, double c) {
  double e;
  TwoSum(p->s, s, &p->s, &e);
  const double t = e + c;
  p->c += t;
  p->err += std::fabs(t) + std::fabs(p->c);
}

inline void Merge(Partial* p, const Partial& q) {
  MergeDW(p, q.s, q.c);
  p->a += q.a;
  p->err += q.err;
  p->chain += q.chain;
}

constexpr int kW = 8;  // doubles per vector (one AVX-512 register, or split by the compiler)
typedef double VD __attribute__((vector_size(8 * kW)));
typedef int64_t VI __attribute__((vector_size(8 * kW)));
typedef float VF __attribute__((vector_size(4 * kW)));
typedef uint16_t VH __attribute__((vector_size(2 * kW)));
typedef uint32_t VU __attribute__((vector_size(4 * kW)));

inline VD LoadW(const double* p) {
  VD d;
  std::memcpy(&d, p, sizeof(d));
  return d;
}
inline VD LoadW(const float* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<VD>(_mm512_cvtps_pd(_mm256_loadu_ps(p)));  // one widening load
#else
  VF f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, VD);
#endif
}
inline VD LoadW(const Eigen::bfloat16* p) {  // bfloat16: the top half of a float
  VH h;
  std::memcpy(&h, p, sizeof(h));
  const VU u = __builtin_convertvector(h, VU) << 16;
  return __builtin_convertvector(reinterpret_cast<VF>(u), VD);
}
inline VD LoadW(const Eigen::half* p) {
  VF f;
  for (int l = 0; l < kW; ++l) f[l] = static_cast<float>(p[l]);
  return __builtin_convertvector(f, VD);
}

inline VD AbsW(VD v) {
  return reinterpret_cast<VD>(reinterpret_cast<VI>(v) & (std::numeric_limits<int64_t>::max)());
}

// The filter over x[0, len), len <= kBlock: kLanes lanes, merged in a fixed order.
template <typename T>
Partial FilterBlock(const T* x, int64_t len) {
  Partial p;
  if (len < 2 * kLanes) {  // short: one lane
    double s = -0.0, c = 0.0, a = 0.0;
    for (int64_t i = 0; i < len; ++i) {
      const double v = ToDouble(x[i]);
      double e;
      TwoSum(s, v, &s, &e);
      c += e;
      a += std::fabs(v);
    }
    p.s = s;
    p.c = c;
    p.a = a;
    p.chain = static_cast<double>(len) * static_cast<double>(len + 1) * a;
    return p;
  }
  constexpr int kVec = kLanes / kW;
  VD s[kVec], c[kVec], a[kVec];
  for (int k = 0; k < kVec; ++k) {
    s[k] = -VD{};  // -0.0 in every lane
    c[k] = a[k] = VD{};
  }
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int k = 0; k < kVec; ++k) {
      const VD b = LoadW(x + i + kW * k);
      const VD t = s[k] + b;
      const VD z = t - s[k];
      c[k] += (s[k] - (t - z)) + (b - z);
      s[k] = t;
      a[k] += AbsW(b);
    }
  }
  double ta = 0.0;
  for (; i < len; ++i) {  // the tail: one more lane, shorter than the others
    const double v = ToDouble(x[i]);
    double e;
    TwoSum(p.s, v, &p.s, &e);
    p.c += e;
    ta += std::fabs(v);
  }
  for (int k = 0; k < kVec; ++k) {
    for (int l = 0; l < kW; ++l) {
      MergeDW(&p, s[k][l], c[k][l]);
      ta += a[k][l];
    }
  }
  const double lane = static_cast<double>(len / kLanes + kLanes);  // longest lane, tail included
  p.a = ta;
  p.chain = lane * (lane + 1.0) * ta;
  return p;
}

// Narrow inputs (float, half, bfloat16) take a cheaper filter: sums of kChain terms in
// plain double (each such sum errs by at most gamma_{kChain-1} times its terms' sum |x|), each
// added by TwoSum into one of kLanes (s, c) lanes, with sum |x| in float lanes (an upper bound
// within a factor 1 + m 2^-23 for chains of m float additions; inf where it overflows, which
// fails the certification). The bound gains gamma_{kChain-1} A: for a float32 sum of condition
// number below 2^20, at most 1/40 of half an ulp.
constexpr int kChain = 4;
typedef float VF16 __attribute__((vector_size(64)));
typedef int32_t VI16 __attribute__((vector_size(64)));
typedef uint16_t VH16 __attribute__((vector_size(32)));
typedef uint32_t VU16 __attribute__((vector_size(64)));

inline VF16 Load16(const float* p) {
  VF16 f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}
inline VF16 Load16(const Eigen::bfloat16* p) {
  VH16 h;
  std::memcpy(&h, p, sizeof(h));
  return reinterpret_cast<VF16>(__builtin_convertvector(h, VU16) << 16);
}
inline VF16 Load16(const Eigen::half* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<VF16>(
      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
  VF16 f;
  for (int l = 0; l < 16; ++l) f[l] = static_cast<float>(p[l]);
  return f;
#endif
}

// The two halves of 16 floats widened to doubles (one instruction each with AVX-512; the
// generic conversion compiles to four).
inline VD LowHalf(VF16 f) {
#if defined(__AVX512F__)
  return reinterpret_cast<VD>(_mm512_cvtps_pd(_mm512_castps512_ps256(reinterpret_cast<__m512>(f))));
#else
  return __builtin_convertvector(__builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7), VD);
#endif
}
inline VD HighHalf(VF16 f) {
#if defined(__AVX512F__)
  return reinterpret_cast<VD>(_mm512_cvtps_pd(_mm256_castpd_ps(
      _mm512_extractf64x4_pd(_mm512_castps_pd(reinterpret_cast<__m512>(f)), 1))));
#else
  return __builtin_convertvector(__builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15),
                                 VD);
#endif
}

inline VF16 Abs16(VF16 v) {
  return reinterpret_cast<VF16>(reinterpret_cast<VI16>(v) & 0x7FFFFFFF);
}

template <typename T>
Partial FilterBlockNarrow(const T* x, int64_t len) {
  constexpr int64_t kStep = kLanes * kChain;
  if (len < 2 * kStep) return FilterBlock(x, len);
  static_assert(kLanes == 32, "two float vectors of 16 per row of lanes");
  VD s[4], c[4];
  VF16 a[2];
  for (int k = 0; k < 4; ++k) {
    s[k] = -VD{};  // -0.0 in every lane
    c[k] = VD{};
  }
  a[0] = a[1] = VF16{};
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    VD t[4];
    for (int j = 0; j < kChain; ++j) {
      const VF16 f0 = Load16(x + i + kLanes * j), f1 = Load16(x + i + kLanes * j + 16);
      a[0] += Abs16(f0);
      a[1] += Abs16(f1);
      const VD d[4] = {LowHalf(f0), HighHalf(f0), LowHalf(f1), HighHalf(f1)};
      for (int k = 0; k < 4; ++k) t[k] = j == 0 ? d[k] : t[k] + d[k];
    }
    for (int k = 0; k < 4; ++k) {
      const VD u = s[k] + t[k];
      const VD z = u - s[k];
      c[k] += (s[k] - (u - z)) + (t[k] - z);
      s[k] = u;
    }
  }
  Partial p = FilterBlock(x + i, len - i);  // the tail: short, on its own
  double ta = 0.0;
  for (int k = 0; k < 2; ++k) {
    for (int l = 0; l < 16; ++l) ta += static_cast<double>(a[k][l]);
  }
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < kW; ++l) MergeDW(&p, s[k][l], c[k][l]);
  }
  const double rows = static_cast<double>(i / kLanes);  // float additions per float lane
  ta *= 1.0 + (rows + 16.0) * 0x1p-23;  // an upper bound of the true sum |x|
  const double lane = static_cast<double>(i / kStep);  // TwoSums per lane
  p.a += ta;
  p.chain += lane * (lane + 1.0) * ta;
  p.err += (kChain - 1) * 1.01 * ta;  // gamma_{kChain-1} / u per unit of sum |x|
  return p;
}

template <typename T>
inline Partial Filter(const T* x, int64_t len) {
  return FilterBlockNarrow(x, len);
}
template <>
inline Partial Filter<double>(const double* x, int64_t len) {
  return FilterBlock(x, len);
}

// For a positive normal double h: the e with h in [2^(e-1), 2^e) (std::frexp's exponent).
inline int ExponentOf(double h) {
  uint64_t b;
  std::memcpy(&b, &h, sizeof(b));
  return static_cast<int>(b >> 52) - 1022;
}

// 2^k for k in [-1022, 1023] (std::ldexp(1.0, k)), from its bit pattern.
inline double Pow2(int k) {
  const uint64_t b = static_cast<uint64_t>(k + 1023) << 52;
  double v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

// The double next to a positive finite normal h towards +inf (dir 1) or 0 (dir -1).
inline double Next(double h, int dir) {
  uint64_t b;
  std::memcpy(&b, &h, sizeof(b));
  b += static_cast<uint64_t>(static_cast<int64_t>(dir));
  double v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

// The correctly rounded value of the double-double h + l (|error| <= e) in T, if the bound
// proves it; writes its bits (sign included) to *out. (Exponents and powers of two come
// from bit patterns: H lies in [MinCert, MaxCert), all of it normal doubles.)
template <typename T>
bool CertifyDW(double h, double l, double e, uint64_t* out) {
  using P = Params<T>;
  double H, L;
  TwoSum(h, l, &H, &L);
  const bool neg = H < 0;
  if (neg) {
    H = -H;
    L = -L;
  }
  if (!(H >= P::MinCert() && H < P::MaxCert() && e < H)) return false;
  uint64_t mag;
  if constexpr (std::is_same<T, double>::value) {
    const double up = Next(H, 1) - H;  // exact: neighbours' gaps
    const double down = H - Next(H, -1);
    if (!(L + e < 0.5 * up && L - e > -0.5 * down)) return false;
    std::memcpy(&mag, &H, sizeof(mag));
  } else {
    // r: H rounded to kP bits (the sum with sigma rounds at r's last bit, exactly once)
    const int ex = ExponentOf(H);  // H in [2^(ex-1), 2^ex)
    const double sigma = Pow2(ex - 1 + 53 - P::kP);
    const double r = (H + sigma) - sigma;
    const int er = ExponentOf(r);  // r in [2^(er-1), 2^er)
    const double ulp = Pow2(er - P::kP);
    const double gap_down = r == Pow2(er - 1) ? 0.5 * ulp : ulp;  // r a power of two
    const double mid_hi = r + 0.5 * ulp, mid_lo = r - 0.5 * gap_down;  // exact
    // Sterbenz: the differences are exact where H is within a factor 2 of the midpoints
    if (!(H <= 2.0 * mid_hi && H >= 0.5 * mid_hi && H <= 2.0 * mid_lo && H >= 0.5 * mid_lo)) {
      return false;
    }
    const double d_hi = mid_hi - H, d_lo = H - mid_lo;
    if (!(L + e < d_hi && L - e > -d_lo)) return false;
    mag = BitsOf(static_cast<T>(static_cast<float>(r)));  // exact conversions
  }
  *out = neg ? (mag | P::kSignBit) : mag;
  return true;
}

// Pass 1's verdict on a whole row: the result's bits, or false for pass 2.
template <typename T>
bool Certify(const Partial& p, int64_t n, bool mean, uint64_t* out) {
  if (!(p.a <= std::numeric_limits<double>::max()) || !std::isfinite(p.s) ||
      !std::isfinite(p.c) || !std::isfinite(p.err) || !(p.chain <= 1e300)) {
    return false;  // NaN, inf or overflow somewhere: pass 2 counts the specials
  }
  if (p.a == 0.0) {  // only zeros: -0.0 if all were -0.0 (IEEE sums s exactly so), else +0.0
    *out = std::signbit(p.s) ? Params<T>::kSignBit : 0;
    return true;
  }
  // (+ 2^-1070: a division's result may be subnormal, where its error is absolute)
  double e = 2.0 * (0.51 * kU * kU * p.chain + kU * p.err) + 0x1p-1070;
  if (!mean) return CertifyDW<T>(p.s, p.c, e, out);
  const double dn = static_cast<double>(n);
  double h, l;
  TwoSum(p.s, p.c, &h, &l);
  const double q = h / dn;
  if (!(std::fabs(q) >= 0x1p-1000)) return false;  // the remainder below must be exact
  const double rem = std::fma(-q, dn, h);
  const double t = (rem + l) / dn;
  e = 2.0 * (e / dn + 3.0 * kU * std::fabs(t)) + 0x1p-1070;
  return CertifyDW<T>(q, t, e, out);
}

// Column sums of a [n, inner] slab (the reduced axis in the middle, x at column j0): the
// columns are the lanes, kMv vectors of kW and `tail` scalar columns, restarted every
// kRowBlock rows (the block's longest lane) and merged into out[j] per column.
constexpr int64_t kCols = 64;       // columns per unit of a column reduction
constexpr int64_t kRowBlock = 256;  // rows per block of a column reduction

template <int kMv, typename T>
void FilterColumnsT(const T* x, int64_t n, int64_t inner, int tail, Partial* out) {
  for (int64_t r0 = 0; r0 < n; r0 += kRowBlock) {
    const int64_t r1 = std::min(n, r0 + kRowBlock);
    VD s[kMv > 0 ? kMv : 1], c[kMv > 0 ? kMv : 1], a[kMv > 0 ? kMv : 1];
    for (int k = 0; k < kMv; ++k) {
      s[k] = -VD{};
      c[k] = a[k] = VD{};
    }
    double ts[kW], tc[kW], ta[kW];
    for (int l = 0; l < tail; ++l) {
      ts[l] = -0.0;
      tc[l] = ta[l] = 0.0;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = x + r * inner;
      for (int k = 0; k < kMv; ++k) {
        const VD b = LoadW(row + kW * k);
        const VD t = s[k] + b;
        const VD z = t - s[k];
        c[k] += (s[k] - (t - z)) + (b - z);
        s[k] = t;
        a[k] += AbsW(b);
      }
      for (int l = 0; l < tail; ++l) {
        const double v = ToDouble(row[kW * kMv + l]);
        double e;
        TwoSum(ts[l], v, &ts[l], &e);
        tc[l] += e;
        ta[l] += std::fabs(v);
      }
    }
    const double k = static_cast<double>(r1 - r0);
    for (int q = 0; q < kMv; ++q) {
      for (int l = 0; l < kW; ++l) {
        Partial* p = out + kW * q + l;
        MergeDW(p, s[q][l], c[q][l]);
        p->a += a[q][l];
        p->chain += k * (k + 1.0) * a[q][l];
      }
    }
    for (int l = 0; l < tail; ++l) {
      Partial* p = out + kW * kMv + l;
      MergeDW(p, ts[l], tc[l]);
      p->a += ta[l];
      p->chain += k * (k + 1.0) * ta[l];
    }
  }
}

// FilterColumnsT for m <= kCols columns; out[0, m) must be fresh partials.
template <typename T>
void FilterColumns(const T* x, int64_t n, int64_t inner, int64_t m, Partial* out) {
  const int tail = static_cast<int>(m % kW);
  switch (m / kW) {
    case 8: return FilterColumnsT<8>(x, n, inner, tail, out);
    case 7: return FilterColumnsT<7>(x, n, inner, tail, out);
    case 6: return FilterColumnsT<6>(x, n, inner, tail, out);
    case 5: return FilterColumnsT<5>(x, n, inner, tail, out);
    case 4: return FilterColumnsT<4>(x, n, inner, tail, out);
    case 3: return FilterColumnsT<3>(x, n, inner, tail, out);
    case 2: return FilterColumnsT<2>(x, n, inner, tail, out);
    case 1: return FilterColumnsT<1>(x, n, inner, tail, out);
    default: return FilterColumnsT<0>(x, n, inner, tail, out);
  }
}
static_assert(kCols == 8 * kW, "FilterColumns dispatches up to 8 vectors");

// ---------------------------------------------------------------------------- pass 2: exact

constexpr int kNan = 0, kPinf = 1, kNinf = 2, kNegZero = 3, kCount = 4, kNumCounters = 5;

// A part's exact state: J int64 digits (not normalized) and the counters.
template <typename T>
struct State {
  int64_t d[Params<T>::kDigits + kNumCounters];
  int64_t* counters() { return d + Params<T>::kDigits; }
  void Clear() { std::memset(d, 0, sizeof(d)); }
  void Add(const State& o) {
    for (int k = 0; k < Params<T>::kDigits + kNumCounters; ++k) d[k] += o.d[k];
  }
};

// Integer bins, one per exponent (float64: and 26 above), zero between uses.
template <typename T>
struct Bins {
  int64_t v[Params<T>::kBins];
  Bins() { std::memset(v, 0, sizeof(v)); }
};

// Adds x[0], x[stride], ... (len terms, len <= kExactChunk) into st: mantissas into the bins
// per exponent, folded into the digits at the end; only the bins in the range touched are
// read and cleared again.
template <typename T>
void ExactSpan(const T* x, int64_t len, State<T>* st, Bins<T>* scratch, int64_t stride) {
  using P = Params<T>;
  typedef typename Fmt<T>::Bits B;
  int64_t* bins = scratch->v;
  int lo = P::kBins, hi = -1;
  int64_t nan = 0, pinf = 0, ninf = 0, negzero = 0;
  constexpr B kEmask = (B{1} << P::kEbits) - 1;
  constexpr uint64_t kFmask = (uint64_t{1} << (P::kP - 1)) - 1;
  for (int64_t i = 0; i < len; ++i) {
    const B b = BitsOf(x[i * stride]);
    const int biased = static_cast<int>((b >> (P::kP - 1)) & kEmask);
    const uint64_t frac = static_cast<uint64_t>(b) & kFmask;
    const uint64_t sign = static_cast<uint64_t>(b >> (P::kWidth - 1));
    if (biased == static_cast<int>(kEmask)) {  // inf or NaN
      if (frac != 0) {
        ++nan;
      } else if (sign) {
        ++ninf;
      } else {
        ++pinf;
      }
      continue;
    }
    negzero += (static_cast<uint64_t>(b) == P::kSignBit);
    const int normal = biased != 0;
    const uint64_t m = frac | (static_cast<uint64_t>(normal) << (P::kP - 1));
    const int pos = biased - normal;
    const uint64_t flip = 0 - sign;  // all ones for a negative value
    if (P::kSplit) {
      const int64_t mlo = static_cast<int64_t>(((m & ((1u << P::kHiShift) - 1)) ^ flip) + sign);
      const int64_t mhi = static_cast<int64_t>(((m >> P::kHiShift) ^ flip) + sign);
      bins[pos] += mlo;
      bins[pos + P::kHiShift] += mhi;
      lo = std::min(lo, pos);
      hi = std::max(hi, pos + P::kHiShift);
    } else {
      bins[pos] += static_cast<int64_t>((m ^ flip) + sign);
      lo = std::min(lo, pos);
      hi = std::max(hi, pos);
    }
  }
  // fold: bin q holds an integer of weight 2^(q + emin_sub), i.e. bit q of the digit frame
  for (int q = lo; q <= hi; ++q) {
    const int64_t v = bins[q];
    if (v == 0) continue;
    bins[q] = 0;
    const int j = q >> 5;
    const __int128 w = static_cast<__int128>(v) * (int64_t{1} << (q & 31));
    st->d[j] += static_cast<int64_t>(static_cast<uint64_t>(w) & kMask32);
    st->d[j + 1] += static_cast<int64_t>(static_cast<uint64_t>(w >> 32) & kMask32);
    st->d[j + 2] += static_cast<int64_t>(w >> 64);
  }
  int64_t* c = st->counters();
  c[kNan] += nan;
  c[kPinf] += pinf;
  c[kNinf] += ninf;
  c[kNegZero] += negzero;
  c[kCount] += len;
}

template <typename T>
void ExactRange(const T* x, int64_t len, State<T>* st, Bins<T>* scratch,
                int64_t stride = 1) {
  for (int64_t start = 0; start < len; start += kExactChunk) {
    ExactSpan(x + start * stride, std::min(kExactChunk, len - start), st, scratch, stride);
  }
}

// Carry propagation: digits in [0, 2^32), the top one signed.
inline void Normalize(int64_t* d, int k) {
  int64_t carry = 0;
  for (int i = 0; i < k - 1; ++i) {
    const int64_t v = d[i] + carry;
    d[i] = v & static_cast<int64_t>(kMask32);
    carry = v >> 32;  // arithmetic shift: floor division
  }
  d[k - 1] += carry;
}

// The nearest-even rounding of sum_k mag[k] 2^(32 k + base) (a nonzero remainder below: sticky)
// to T's magnitude bits, with gradual underflow and overflow to inf.
template <typename T>
uint64_t RoundMag(const uint64_t* mag, int k, int base, bool sticky) {
  using P = Params<T>;
  int t = k - 1;
  while (t >= 0 && mag[t] == 0) --t;
  if (t < 0) return 0;
  const u128 w = (static_cast<u128>(mag[t]) << 64) |
                 (static_cast<u128>(t >= 1 ? mag[t - 1] : 0) << 32) |
                 static_cast<u128>(t >= 2 ? mag[t - 2] : 0);
  for (int i = 0; i < t - 2; ++i) sticky |= mag[i] != 0;
  const int64_t wbase = 32 * static_cast<int64_t>(t - 2) + base;  // exponent of w's bit 0
  const int bl = 64 - __builtin_clzll(mag[t]);
  const int64_t e_top = 32 * static_cast<int64_t>(t) + base + bl - 1;
  const int64_t lsb = std::max<int64_t>(e_top - (P::kP - 1), P::kEminSub);
  const int64_t drop = lsb - wbase;
  u128 q = 0;
  if (drop <= 0) {
    q = w << (-drop);  // exact (the bits below the window are below half an ulp)
  } else if (drop <= 96) {
    q = w >> drop;
    const u128 rem = w - (q << drop);
    const u128 half = static_cast<u128>(1) << (drop - 1);
    const bool odd = (q & 1) != 0;
    q += (rem > half || (rem == half && (sticky || odd))) ? 1 : 0;
  }  // drop > 96: below half the smallest subnormal, rounds to 0
  const int64_t exp_part = lsb - P::kEminSub;  // the exponent field minus 1
  if (exp_part >= (int64_t{1} << P::kEbits) - 2) return P::kInfBits;
  const u128 bits = (static_cast<u128>(exp_part) << (P::kP - 1)) + q;
  return bits >= P::kInfBits ? P::kInfBits : static_cast<uint64_t>(bits);
}

// The correctly rounded sum (or mean) of a state, as T's bits (IEEE special cases).
template <typename T>
uint64_t Finish(State<T>* st, bool mean) {
  using P = Params<T>;
  constexpr int kD = P::kDigits;
  const int64_t* c = st->counters();
  if (c[kNan] > 0 || (c[kPinf] > 0 && c[kNinf] > 0)) return P::kNanBits;
  if (c[kPinf] > 0) return P::kInfBits;
  if (c[kNinf] > 0) return P::kInfBits | P::kSignBit;
  const int64_t n = c[kCount];
  if (n == 0) return mean ? P::kNanBits : 0;
  int64_t* d = st->d;
  Normalize(d, kD);
  const bool neg = d[kD - 1] < 0;
  if (neg) {
    for (int i = 0; i < kD; ++i) d[i] = -d[i];
    Normalize(d, kD);
  }
  uint64_t mag[kD + 2];
  uint64_t bits;
  if (!mean) {
    for (int i = 0; i < kD; ++i) mag[i] = static_cast<uint64_t>(d[i]);
    bits = RoundMag<T>(mag, kD, P::kEminSub, false);
  } else {  // long division by n, two digits below the point, the remainder as sticky bit
    const uint64_t dn = static_cast<uint64_t>(n);
    int top = kD - 1;
    while (top > 0 && d[top] == 0) --top;
    for (int i = kD + 1; i > top + 2; --i) mag[i] = 0;
    bool sticky;
    if (dn <= kMask32) {  // remainder and digit fit in 64 bits
      uint64_t rem = 0;
      for (int i = top + 2; i >= 0; --i) {
        const uint64_t cur = (rem << 32) | (i >= 2 ? static_cast<uint64_t>(d[i - 2]) : 0);
        mag[i] = cur / dn;
        rem = cur % dn;
      }
      sticky = rem != 0;
    } else {
      u128 rem = 0;
      for (int i = top + 2; i >= 0; --i) {
        const u128 cur = (rem << 32) | (i >= 2 ? static_cast<uint64_t>(d[i - 2]) : 0);
        mag[i] = static_cast<uint64_t>(cur / dn);
        rem = cur % dn;
      }
      sticky = rem != 0;
    }
    bits = RoundMag<T>(mag, kD + 2, P::kEminSub - 64, sticky);
  }
  const bool sign = neg || c[kNegZero] == n;
  return sign ? (bits | P::kSignBit) : bits;
}

// ---------------------------------------------------------------------------- the op

// Segments a row's nb blocks are cut into when `rows` rows are reduced: a function of the
// shape only, above 1 only where rows x segments partials fit in `budget`.
int64_t Segments(int64_t rows, int64_t nb, int64_t budget) {
  const int64_t fit = budget / std::max<int64_t>(1, rows);
  return std::max<int64_t>(1, std::min(std::min(nb, kMaxSplit), fit));
}

template <typename T>
class ExactSumOp : public OpKernel {
 public:
  explicit ExactSumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mean", &mean_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& in = ctx->input(0);
    OP_REQUIRES(ctx, in.dims() == 2 || in.dims() == 3,
                ::tensorflow::errors::InvalidArgument(
                    "SafeopsExactSum: input 'x' must be rank 2 [rows, n] or rank 3 "
                    "[outer, n, inner]; got shape ", in.shape().DebugString()));
    const int64_t rows = in.dim_size(0), n = in.dim_size(1);
    const int64_t inner = in.dims() == 3 ? in.dim_size(2) : 1;
    // [outer, inner] can overflow where n == 0 (an empty input of huge dimensions)
    ::tensorflow::TensorShape out_shape;
    const int64_t dims[2] = {rows, inner};
    OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(dims, in.dims() - 1,
                                                                  &out_shape));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    const int64_t outputs = out_shape.num_elements();
    if (outputs == 0) return;
    T* y = out->flat<T>().data();
    if (n == 0) {  // the empty sum is +0.0, the empty mean NaN (as tf.reduce_mean)
      const T v = FromBits<T>(mean_ ? Params<T>::kNanBits : 0);
      for (int64_t o = 0; o < outputs; ++o) y[o] = v;
      return;
    }
    const T* x = in.flat<T>().data();
    if (inner > 1) {
      SumColumns(ctx, x, rows, n, inner, y);
      return;
    }
    const int64_t nb = (n + kBlock - 1) / kBlock;
    const int64_t segs = Segments(rows, nb, kSplitBudget);
    const bool filter = n < kMaxFilter;
    // the filter over segment k of row o
    auto filter_segment = [&](int64_t o, int64_t k, int64_t parts) {
      Partial p;
      for (int64_t b = k * nb / parts; b < (k + 1) * nb / parts; ++b) {
        const int64_t start = b * kBlock;
        Merge(&p, Filter(x + o * n + start, std::min(kBlock, n - start)));
      }
      return p;
    };
    const int64_t cost = std::max<int64_t>(1, std::min(n, (nb / segs + 1) * kBlock)) * 8;
    if (segs == 1) {  // each row on one thread, from its data straight to its output
      ParallelFor(ctx, rows, cost, [&](int64_t lo, int64_t hi) {
        ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
        Bins<T> scratch;
        for (int64_t o = lo; o < hi; ++o) {
          uint64_t bits;
          if (!filter || !Certify<T>(filter_segment(o, 0, 1), n, mean_, &bits)) {
            State<T> st;
            st.Clear();
            ExactRange(x + o * n, n, &st, &scratch);
            bits = Finish<T>(&st, mean_);
          }
          y[o] = FromBits<T>(bits);
        }
      });
      return;
    }
    // few long rows: segments of each row in parallel, merged in order
    std::vector<int64_t> pending;
    if (filter) {
      std::vector<Partial> part(rows * segs);  // <= kSplitBudget (Segments)
      ParallelFor(ctx, rows * segs, cost, [&](int64_t lo, int64_t hi) {
        ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
        for (int64_t u = lo; u < hi; ++u) part[u] = filter_segment(u / segs, u % segs, segs);
      });
      ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
      for (int64_t o = 0; o < rows; ++o) {
        Partial p;
        for (int64_t k = 0; k < segs; ++k) Merge(&p, part[o * segs + k]);
        uint64_t bits;
        if (Certify<T>(p, n, mean_, &bits)) {
          y[o] = FromBits<T>(bits);
        } else {
          pending.push_back(o);
        }
      }
    } else {
      for (int64_t o = 0; o < rows; ++o) pending.push_back(o);
    }
    if (pending.empty()) return;
    const int64_t np = static_cast<int64_t>(pending.size());
    const int64_t esegs = Segments(np, nb, kExactBudget);
    std::vector<State<T>> states(np * esegs);  // <= kExactBudget (Segments)
    ParallelFor(ctx, np * esegs, std::min(n, (nb / esegs + 1) * kBlock) * 12,
                [&](int64_t lo, int64_t hi) {
                  Bins<T> scratch;
                  for (int64_t u = lo; u < hi; ++u) {
                    const int64_t o = pending[u / esegs], k = u % esegs;
                    const int64_t b0 = k * nb / esegs, b1 = (k + 1) * nb / esegs;
                    const int64_t start = b0 * kBlock, end = std::min(n, b1 * kBlock);
                    states[u].Clear();
                    if (end > start) {
                      ExactRange(x + o * n + start, end - start, &states[u], &scratch);
                    }
                  }
                });
    for (int64_t i = 0; i < np; ++i) {
      State<T>& st = states[i * esegs];
      for (int64_t k = 1; k < esegs; ++k) st.Add(states[i * esegs + k]);
      y[pending[i]] = FromBits<T>(Finish<T>(&st, mean_));
    }
  }

 private:
  // [outer, n, inner], inner > 1: the columns of each [n, inner] slab, kCols per unit.
  void SumColumns(OpKernelContext* ctx, const T* x, int64_t outer, int64_t n, int64_t inner,
                  T* y) {
    const int64_t ncc = (inner + kCols - 1) / kCols;
    const bool filter = n < kMaxFilter;
    ParallelFor(ctx, outer * ncc, n * std::min(inner, kCols) * 8, [&](int64_t lo, int64_t hi) {
      ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
      Bins<T> scratch;
      Partial parts[kCols];
      for (int64_t v = lo; v < hi; ++v) {
        const int64_t o = v / ncc, j0 = (v % ncc) * kCols, m = std::min(kCols, inner - j0);
        const T* base = x + o * n * inner + j0;
        for (int64_t j = 0; j < m; ++j) parts[j] = Partial();
        if (filter) FilterColumns(base, n, inner, m, parts);
        for (int64_t j = 0; j < m; ++j) {
          uint64_t bits;
          if (!filter || !Certify<T>(parts[j], n, mean_, &bits)) {
            State<T> st;
            st.Clear();
            ExactRange(base + j, n, &st, &scratch, inner);
            bits = Finish<T>(&st, mean_);
          }
          y[o * inner + j0 + j] = FromBits<T>(bits);
        }
      }
    });
  }

  bool mean_;
};


// ---------------------------------------------------------------------------- segment sums
//
// SafeopsExactSegmentSum: data [rows, inner], segment_ids [rows] (int32, int64), counts
// [num_segments] (int32) -> [num_segments, inner]: output (g, j) is the correctly rounded
// sum (attr mean: sum / count) of data[r, j] over the rows r with segment_ids[r] == g, with
// the special values and bits of SafeopsExactSum; rows with a negative id are dropped, an id
// >= num_segments is an InvalidArgument error, an empty segment gives +0.0 (sum and mean).
// counts[g] must be the number of rows of segment g (modulo 2^32), as TensorFlow's segment
// op of int32 ones gives it: its checks of the ids (range, order) then run before this op,
// which depends on their result as data (a control edge from an op whose value is unused
// is pruned by graph rewrites).
//
// Pass 1 streams the rows once, cut into at most one shard of rows per thread. A shard holds,
// for the span of ids its rows use, per output the sum |x| a of its k terms and their sum:
// float64 terms added by TwoSum into one (s, c) lane (the one-lane block of the filter: the
// chain term k (k + 1) a); narrower terms added in plain double, which errs in any order by at
// most gamma_{k-1} A <= 1.02 (k - 1) u a for k < 2^40 (the narrow filter's err term). The
// shards' Partials of an output are merged (Merge) and certified (Certify) as a row of
// SafeopsExactSum. Pass 2 sums the outputs pass 1 cannot decide exactly (ExactRange, Finish)
// from their segment's rows. The arithmetic runs with subnormals not flushed; the shards
// change which outputs certify, never a result.
//
// Memory: besides its output, the shards' partials (2 doubles per output of each shard's id
// span, float64: 3; shards are merged while they would need more than twice one shard's
// span of all ids, or 2^21 doubles), one int64 row count per id of each span, and for pass 2 the
// rows of the undecided segments (int64 each) and a gather buffer per thread.

constexpr int64_t kShardElems = int64_t{1} << 16;  // fewest elements worth a shard of rows
constexpr int64_t kMaxShards = 64;
constexpr double kShardBudget = 0x1p21;  // partials (doubles) that never limit the shards

// A cost estimate for ParallelFor, clamped (the products of large sizes overflow int64).
inline int64_t Cost(double cycles) {
  return static_cast<int64_t>(std::min(std::max(cycles, 1.0), 0x1p50));
}

// Adds the row x[0, inner) into a narrow shard's sums s and sums |x| a.
template <typename T>
inline void AddRowNarrow(const T* x, int64_t inner, double* s, double* a) {
  int64_t j = 0;
  for (; j + 16 <= inner; j += 16) {
    const VF16 f = Load16(x + j);
    const VD d[2] = {LowHalf(f), HighHalf(f)};
    for (int h = 0; h < 2; ++h) {
      double* sp = s + j + kW * h;
      double* ap = a + j + kW * h;
      const VD sv = LoadW(sp) + d[h], av = LoadW(ap) + AbsW(d[h]);
      std::memcpy(sp, &sv, sizeof(sv));
      std::memcpy(ap, &av, sizeof(av));
    }
  }
  for (; j < inner; ++j) {
    const double v = ToDouble(x[j]);
    s[j] += v;
    a[j] += std::fabs(v);
  }
}

// Adds the float64 row x[0, inner) into a shard's TwoSum lanes (s, c) and sums |x| a.
inline void AddRowWide(const double* x, int64_t inner, double* s, double* c, double* a) {
  int64_t j = 0;
  for (; j + kW <= inner; j += kW) {
    const VD b = LoadW(x + j);
    const VD sv = LoadW(s + j);
    const VD t = sv + b;
    const VD z = t - sv;
    const VD cv = LoadW(c + j) + ((sv - (t - z)) + (b - z));
    const VD av = LoadW(a + j) + AbsW(b);
    std::memcpy(s + j, &t, sizeof(t));
    std::memcpy(c + j, &cv, sizeof(cv));
    std::memcpy(a + j, &av, sizeof(av));
  }
  for (; j < inner; ++j) {
    double e;
    TwoSum(s[j], x[j], &s[j], &e);
    c[j] += e;
    a[j] += std::fabs(x[j]);
  }
}

template <typename T, typename Index>
class ExactSegmentSumOp : public OpKernel {
 public:
  explicit ExactSegmentSumOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("mean", &mean_));
  }

  void Compute(OpKernelContext* ctx) override {
    namespace errors = ::tensorflow::errors;
    const Tensor& data = ctx->input(0);
    const Tensor& ids_in = ctx->input(1);
    const Tensor& counts_in = ctx->input(2);
    OP_REQUIRES(ctx, data.dims() == 2,
                errors::InvalidArgument("SafeopsExactSegmentSum: input 'data' must be rank 2 "
                                        "[rows, inner]; got shape ", data.shape().DebugString()));
    OP_REQUIRES(ctx, ids_in.dims() == 1 && ids_in.dim_size(0) == data.dim_size(0),
                errors::InvalidArgument("SafeopsExactSegmentSum: input 'segment_ids' must be a "
                                        "vector of data's ", data.dim_size(0), " rows; got shape ",
                                        ids_in.shape().DebugString()));
    OP_REQUIRES(ctx, counts_in.dims() == 1,
                errors::InvalidArgument("SafeopsExactSegmentSum: input 'counts' must be a "
                                        "vector [num_segments]; got shape ",
                                        counts_in.shape().DebugString()));
    const int64_t num = counts_in.dim_size(0);
    const int32_t* counts = counts_in.flat<int32_t>().data();
    const int64_t rows = data.dim_size(0), inner = data.dim_size(1);
    ::tensorflow::TensorShape out_shape;
    const int64_t dims[2] = {num, inner};
    OP_REQUIRES_OK(ctx, ::tensorflow::TensorShapeUtils::MakeShape(dims, 2, &out_shape));
    const Index* ids = ids_in.flat<Index>().data();

    // shards of rows, each with the span [lo, hi] of the valid ids it holds (lo > hi: none)
    const int threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
    int64_t shards = std::min<int64_t>(std::min<int64_t>(threads, kMaxShards),
                                       data.NumElements() / kShardElems);
    shards = std::max<int64_t>(1, std::min(shards, rows));
    std::vector<int64_t> start(shards + 1), lo(shards), hi(shards), bad(shards);
    for (int64_t t = 0; t <= shards; ++t) start[t] = t * rows / shards;
    ParallelFor(ctx, shards, Cost(2.0 * rows / shards), [&](int64_t u0, int64_t u1) {
      for (int64_t t = u0; t < u1; ++t) {
        int64_t l = num, h = -1, b = -1;
        for (int64_t r = start[t]; r < start[t + 1]; ++r) {
          const int64_t g = static_cast<int64_t>(ids[r]);
          if (g < 0) continue;
          if (g >= num) {
            b = r;
            break;
          }
          l = std::min(l, g);
          h = std::max(h, g);
        }
        lo[t] = l;
        hi[t] = h;
        bad[t] = b;
      }
    });
    for (int64_t t = 0; t < shards; ++t) {
      OP_REQUIRES(ctx, bad[t] < 0,
                  errors::InvalidArgument("SafeopsExactSegmentSum: segment_ids[", bad[t], "] = ",
                                          static_cast<int64_t>(ids[bad[t]]),
                                          " is out of range [0, ", num, ")"));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    const int64_t outputs = out_shape.num_elements();
    if (outputs == 0) return;
    T* y = out->flat<T>().data();

    // fewer shards (neighbours merged) while their partials would take too much memory
    constexpr int64_t kWidth = std::is_same<T, double>::value ? 3 : 2;  // doubles per output
    auto span = [&](int64_t t) { return hi[t] >= lo[t] ? hi[t] - lo[t] + 1 : int64_t{0}; };
    auto need = [&]() {
      double total = 0.0;
      for (int64_t t = 0; t < shards; ++t) total += static_cast<double>(span(t));
      return total * static_cast<double>(inner) * kWidth;
    };
    int64_t all_lo = num, all_hi = -1;
    for (int64_t t = 0; t < shards; ++t) {
      all_lo = std::min(all_lo, lo[t]);
      all_hi = std::max(all_hi, hi[t]);
    }
    const double one = all_hi >= all_lo ? static_cast<double>(all_hi - all_lo + 1) *
                                              static_cast<double>(inner) * kWidth
                                        : 0.0;
    while (shards > 1 && need() > std::max(2.0 * one, kShardBudget)) {
      const int64_t half = (shards + 1) / 2;
      for (int64_t k = 0; k < half; ++k) {
        const int64_t a = 2 * k, b = std::min(2 * k + 1, shards - 1);
        start[k] = start[a];
        lo[k] = std::min(lo[a], lo[b]);
        hi[k] = std::max(hi[a], hi[b]);
      }
      start[half] = rows;
      shards = half;
    }
    std::vector<int64_t> off(shards + 1, 0);  // shard t's ids: off[t] + (g - lo[t])
    for (int64_t t = 0; t < shards; ++t) off[t + 1] = off[t] + span(t);
    Tensor acc_t, seen_t;
    const int64_t partials = off[shards] * kWidth * inner;  // <= 3 outputs per shard
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_DOUBLE,
                                           ::tensorflow::TensorShape({partials}), &acc_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT64,
                                           ::tensorflow::TensorShape({off[shards]}), &seen_t));
    double* acc = acc_t.flat<double>().data();
    int64_t* seen = seen_t.flat<int64_t>().data();
    const T* x = data.flat<T>().data();

    // pass 1: every shard's partials
    ParallelFor(ctx, shards, Cost(4.0 * static_cast<double>(data.NumElements()) / shards),
                [&](int64_t u0, int64_t u1) {
      ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
      for (int64_t t = u0; t < u1; ++t) {
        double* base = acc + off[t] * kWidth * inner;
        int64_t* cnt = seen + off[t];
        const int64_t ids_here = span(t);
        for (int64_t i = 0; i < ids_here; ++i) {
          double* blk = base + i * kWidth * inner;
          std::fill(blk, blk + inner, -0.0);  // s: a sum of only -0.0 stays -0.0
          std::fill(blk + inner, blk + kWidth * inner, 0.0);
          cnt[i] = 0;
        }
        for (int64_t r = start[t]; r < start[t + 1]; ++r) {
          const int64_t g = static_cast<int64_t>(ids[r]);
          if (g < 0) continue;
          const int64_t i = g - lo[t];
          double* blk = base + i * kWidth * inner;
          ++cnt[i];
          if constexpr (std::is_same<T, double>::value) {
            AddRowWide(x + r * inner, inner, blk, blk + inner, blk + 2 * inner);
          } else {
            AddRowNarrow(x + r * inner, inner, blk, blk + inner);
          }
        }
      }
    });

    // certification of every output; the undecided ones are collected as (segment, column)
    std::vector<std::pair<int64_t, int64_t>> pending;
    std::mutex mu;
    int64_t wrong = num;  // the first segment whose count does not match `counts`
    ParallelFor(ctx, num, Cost(static_cast<double>(inner) * (shards * 4 + 60)),
                [&](int64_t g0, int64_t g1) {
      ::tensorflow::port::ScopedDontFlushDenormal exact_subnormals;
      std::vector<std::pair<int64_t, int64_t>> mine;
      for (int64_t g = g0; g < g1; ++g) {
        T* yg = y + g * inner;
        int64_t n = 0;
        for (int64_t t = 0; t < shards; ++t) {
          if (g >= lo[t] && g <= hi[t]) n += seen[off[t] + g - lo[t]];
        }
        if (static_cast<int32_t>(static_cast<uint32_t>(n)) != counts[g]) {
          std::lock_guard<std::mutex> lock(mu);
          wrong = std::min(wrong, g);
          continue;
        }
        if (n == 0) {  // empty: +0.0, the sum and (as tf.math.segment_mean) the mean
          for (int64_t j = 0; j < inner; ++j) yg[j] = FromBits<T>(0);
          continue;
        }
        for (int64_t j = 0; j < inner; ++j) {
          Partial p;
          for (int64_t t = 0; t < shards; ++t) {
            if (g < lo[t] || g > hi[t]) continue;
            const int64_t k = seen[off[t] + g - lo[t]];
            if (k == 0) continue;
            const double* blk = acc + (off[t] + g - lo[t]) * kWidth * inner;
            const double dk = static_cast<double>(k);
            Partial q;
            q.s = blk[j];
            if constexpr (std::is_same<T, double>::value) {
              q.c = blk[inner + j];
              q.a = blk[2 * inner + j];
              q.chain = k < kMaxFilter ? dk * (dk + 1.0) * q.a : HUGE_VAL;
            } else {
              q.a = blk[inner + j];
              q.err = k < kMaxFilter ? 1.02 * (dk - 1.0) * q.a : HUGE_VAL;
            }
            Merge(&p, q);
          }
          uint64_t bits;
          if (Certify<T>(p, n, mean_, &bits)) {
            yg[j] = FromBits<T>(bits);
          } else {
            mine.emplace_back(g, j);
          }
        }
      }
      if (!mine.empty()) {
        std::lock_guard<std::mutex> lock(mu);
        pending.insert(pending.end(), mine.begin(), mine.end());
      }
    });
    OP_REQUIRES(ctx, wrong == num,
                errors::InvalidArgument("SafeopsExactSegmentSum: counts[", wrong, "] = ",
                                        wrong < num ? counts[wrong] : 0,
                                        " is not the number of rows of segment ", wrong));
    if (pending.empty()) return;

    // pass 2: the rows of each undecided segment (row order), then its columns exactly
    std::sort(pending.begin(), pending.end());
    std::vector<int64_t> segs;  // the undecided segments, ascending
    for (const auto& pj : pending) {
      if (segs.empty() || segs.back() != pj.first) segs.push_back(pj.first);
    }
    const int64_t ns = static_cast<int64_t>(segs.size());
    std::vector<int64_t> first(ns + 1, 0);  // segment i's rows: members[first[i], first[i + 1])
    for (int64_t i = 0; i < ns; ++i) {
      int64_t n = 0;
      for (int64_t t = 0; t < shards; ++t) {
        if (segs[i] >= lo[t] && segs[i] <= hi[t]) n += seen[off[t] + segs[i] - lo[t]];
      }
      first[i + 1] = first[i] + n;
    }
    std::vector<int64_t> members(first[ns]), fill(first.begin(), first.end() - 1);
    const int64_t lo_seg = segs.front(), hi_seg = segs.back();
    if (hi_seg - lo_seg < 8 * rows + 1024) {  // a table from segment to its index
      std::vector<int64_t> slot(hi_seg - lo_seg + 1, -1);
      for (int64_t i = 0; i < ns; ++i) slot[segs[i] - lo_seg] = i;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t g = static_cast<int64_t>(ids[r]);
        if (g < lo_seg || g > hi_seg) continue;
        const int64_t i = slot[g - lo_seg];
        if (i >= 0) members[fill[i]++] = r;
      }
    } else {  // few segments spread over many ids: a binary search
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t g = static_cast<int64_t>(ids[r]);
        if (g < lo_seg || g > hi_seg) continue;
        const auto it = std::lower_bound(segs.begin(), segs.end(), g);
        if (*it == g) members[fill[it - segs.begin()]++] = r;
      }
    }
    const int64_t np = static_cast<int64_t>(pending.size());
    ParallelFor(ctx, np, Cost(16.0 * first[ns] / ns), [&](int64_t p0, int64_t p1) {
      Bins<T> scratch;
      std::vector<T> gathered;
      for (int64_t u = p0; u < p1; ++u) {
        const int64_t g = pending[u].first, j = pending[u].second;
        const int64_t i = std::lower_bound(segs.begin(), segs.end(), g) - segs.begin();
        const int64_t* rs = members.data() + first[i];
        const int64_t n = first[i + 1] - first[i];
        State<T> st;
        st.Clear();
        if (rs[n - 1] - rs[0] + 1 == n) {  // consecutive rows: the column read in place
          ExactRange(x + rs[0] * inner + j, n, &st, &scratch, inner);
        } else {
          gathered.resize(n);
          for (int64_t k = 0; k < n; ++k) gathered[k] = x[rs[k] * inner + j];
          ExactRange(gathered.data(), n, &st, &scratch);
        }
        y[g * inner + j] = FromBits<T>(Finish<T>(&st, mean_));
      }
    });
  }

 private:
  bool mean_;
};

}  // namespace

REGISTER_OP("SafeopsExactSum")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("mean: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &x));
      TF_RETURN_IF_ERROR(c->WithRankAtMost(x, 3, &x));
      if (!c->RankKnown(x)) {
        c->set_output(0, c->UnknownShape());
      } else if (c->Rank(x) == 2) {
        c->set_output(0, c->Vector(c->Dim(x, 0)));
      } else {
        c->set_output(0, c->Matrix(c->Dim(x, 0), c->Dim(x, 2)));
      }
      return ::tensorflow::OkStatus();
    });

#define SAFEOPS_REGISTER_EXACT(T)                                                    \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("SafeopsExactSum").Device(DEVICE_CPU).TypeConstraint<T>("T"), ExactSumOp<T>);
SAFEOPS_REGISTER_EXACT(Eigen::half)
SAFEOPS_REGISTER_EXACT(Eigen::bfloat16)
SAFEOPS_REGISTER_EXACT(float)
SAFEOPS_REGISTER_EXACT(double)
#undef SAFEOPS_REGISTER_EXACT

REGISTER_OP("SafeopsExactSegmentSum")
    .Input("data: T")
    .Input("segment_ids: Tindices")
    .Input("counts: int32")
    .Output("y: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tindices: {int32, int64}")
    .Attr("mean: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      shape_inference::ShapeHandle data, ids, counts;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &data));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &counts));
      shape_inference::DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(data, 0), c->Dim(ids, 0), &rows));
      c->set_output(0, c->Matrix(c->Dim(counts, 0), c->Dim(data, 1)));
      return ::tensorflow::OkStatus();
    });

#define SAFEOPS_REGISTER_SEGMENT(T, Index)                                            \
  REGISTER_KERNEL_BUILDER(Name("SafeopsExactSegmentSum")                              \
                              .Device(DEVICE_CPU)                                     \
                              .TypeConstraint<T>("T")                                 \
                              .TypeConstraint<Index>("Tindices"),                     \
                          ExactSegmentSumOp<T, Index>);
#define SAFEOPS_REGISTER_SEGMENTS(T) \
  SAFEOPS_REGISTER_SEGMENT(T, int32_t) SAFEOPS_REGISTER_SEGMENT(T, int64_t)
SAFEOPS_REGISTER_SEGMENTS(Eigen::half)
SAFEOPS_REGISTER_SEGMENTS(Eigen::bfloat16)
SAFEOPS_REGISTER_SEGMENTS(float)
SAFEOPS_REGISTER_SEGMENTS(double)
#undef SAFEOPS_REGISTER_SEGMENTS
#undef SAFEOPS_REGISTER_SEGMENT

}  // namespace safeops
