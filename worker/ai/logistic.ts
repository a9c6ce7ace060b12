// L2-regularised logistic regression fitted by Newton's method (iteratively reweighted least
// squares), and the metrics the project reports (AUC, accuracy, Brier score). A small, exact
// implementation: the feature vectors have a few dozen dimensions, so each Newton step solves a
// d×d system (Cholesky) and the fit converges in a handful of steps, deterministically.

export interface LogisticFit {
  intercept: number;
  weights: number[];
  iterations: number;
  converged: boolean;
}

export const sigmoid = (z: number): number => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));

/**
 * Fits p(y=1|x) = σ(b + w·x), minimising the negative log-likelihood + λ/2·|w|² (the intercept is
 * not penalised). Inputs should be standardised. Rows with a non-finite value are refused.
 */
export function fitLogistic(x: number[][], y: number[], opts: { lambda?: number; maxIterations?: number; tolerance?: number } = {}): LogisticFit {
  const lambda = opts.lambda ?? 1;
  const maxIterations = opts.maxIterations ?? 50;
  const tolerance = opts.tolerance ?? 1e-8;
  const n = x.length;
  if (n === 0 || n !== y.length) throw new Error("fitLogistic needs as many labels as rows, and at least one row");
  const d = x[0]!.length;
  for (const row of x) if (row.length !== d || row.some((v) => !Number.isFinite(v))) throw new Error("fitLogistic: rows must be finite and of equal length");
  // Parameters: [intercept, w1..wd].
  const beta = new Array<number>(d + 1).fill(0);
  const positives = y.reduce((a, b) => a + b, 0);
  const rate = Math.min(Math.max(positives / n, 1e-6), 1 - 1e-6);
  beta[0] = Math.log(rate / (1 - rate));
  let converged = false;
  let iteration = 0;
  for (; iteration < maxIterations; iteration++) {
    const grad = new Array<number>(d + 1).fill(0);
    const hess = Array.from({ length: d + 1 }, () => new Array<number>(d + 1).fill(0));
    for (let i = 0; i < n; i++) {
      const row = x[i]!;
      let z = beta[0]!;
      for (let j = 0; j < d; j++) z += beta[j + 1]! * row[j]!;
      const p = sigmoid(z);
      const r = p - y[i]!;
      const w = Math.max(p * (1 - p), 1e-10);
      grad[0]! += r;
      hess[0]![0]! += w;
      for (let j = 0; j < d; j++) {
        const xj = row[j]!;
        grad[j + 1]! += r * xj;
        hess[0]![j + 1]! += w * xj;
        for (let k = j; k < d; k++) hess[j + 1]![k + 1]! += w * xj * row[k]!;
      }
    }
    for (let j = 1; j <= d; j++) {
      grad[j]! += lambda * beta[j]!;
      hess[j]![j]! += lambda;
      for (let k = 0; k < j; k++) hess[j]![k] = hess[k]![j]!;
    }
    const step = solveSymmetric(hess, grad);
    let largest = 0;
    for (let j = 0; j <= d; j++) {
      beta[j]! -= step[j]!;
      largest = Math.max(largest, Math.abs(step[j]!));
    }
    if (largest < tolerance) {
      converged = true;
      iteration++;
      break;
    }
  }
  return { intercept: beta[0]!, weights: beta.slice(1), iterations: iteration, converged };
}

/** Solves A·x = b for a symmetric positive-definite A (Cholesky), with a tiny ridge if needed. */
export function solveSymmetric(a: number[][], b: number[]): number[] {
  const n = b.length;
  for (let ridge = 0; ridge <= 1e-3; ridge = ridge ? ridge * 10 : 1e-10) {
    const l = Array.from({ length: n }, () => new Array<number>(n).fill(0));
    let ok = true;
    for (let i = 0; i < n && ok; i++) {
      for (let j = 0; j <= i; j++) {
        let s = a[i]![j]! + (i === j ? ridge : 0);
        for (let k = 0; k < j; k++) s -= l[i]![k]! * l[j]![k]!;
        if (i === j) {
          if (!(s > 0)) {
            ok = false;
            break;
          }
          l[i]![i] = Math.sqrt(s);
        } else l[i]![j] = s / l[j]![j]!;
      }
    }
    if (!ok) continue;
    const z = new Array<number>(n).fill(0);
    for (let i = 0; i < n; i++) {
      let s = b[i]!;
      for (let k = 0; k < i; k++) s -= l[i]![k]! * z[k]!;
      z[i] = s / l[i]![i]!;
    }
    const x = new Array<number>(n).fill(0);
    for (let i = n - 1; i >= 0; i--) {
      let s = z[i]!;
      for (let k = i + 1; k < n; k++) s -= l[k]![i]! * x[k]!;
      x[i] = s / l[i]![i]!;
    }
    return x;
  }
  throw new Error("solveSymmetric: the matrix is not positive definite");
}

/** Area under the ROC curve: the probability that a random positive is scored above a random negative (ties count half). */
export function auc(scores: number[], labels: number[]): number {
  const pairs = scores.map((s, i) => [s, labels[i]!] as const).sort((p, q) => p[0] - q[0]);
  let rankSum = 0;
  let positives = 0;
  for (let i = 0; i < pairs.length; ) {
    let j = i;
    while (j < pairs.length && pairs[j]![0] === pairs[i]![0]) j++;
    const midRank = (i + 1 + j) / 2;
    for (let k = i; k < j; k++) if (pairs[k]![1] === 1) {
      rankSum += midRank;
      positives++;
    }
    i = j;
  }
  const negatives = pairs.length - positives;
  if (!positives || !negatives) return Number.NaN;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

export function accuracy(probabilities: number[], labels: number[], threshold: number): number {
  if (!labels.length) return Number.NaN;
  let right = 0;
  for (let i = 0; i < labels.length; i++) if ((probabilities[i]! >= threshold ? 1 : 0) === labels[i]) right++;
  return right / labels.length;
}

/** Mean squared error of the probabilities (0 is perfect; always answering the base rate scores base·(1−base)). */
export function brier(probabilities: number[], labels: number[]): number {
  if (!labels.length) return Number.NaN;
  let s = 0;
  for (let i = 0; i < labels.length; i++) s += (probabilities[i]! - labels[i]!) ** 2;
  return s / labels.length;
}

/** The threshold with the best accuracy on these (training) probabilities; ties go to the one nearest 0.5. */
export function bestThreshold(probabilities: number[], labels: number[]): number {
  const candidates = [...new Set(probabilities.map((p) => Math.round(p * 100) / 100))].concat([0.5]);
  let best = 0.5;
  let bestAccuracy = -1;
  for (const t of candidates.sort((a, b) => a - b)) {
    const a = accuracy(probabilities, labels, t);
    if (a > bestAccuracy + 1e-12 || (Math.abs(a - bestAccuracy) <= 1e-12 && Math.abs(t - 0.5) < Math.abs(best - 0.5))) {
      best = t;
      bestAccuracy = a;
    }
  }
  return best;
}
