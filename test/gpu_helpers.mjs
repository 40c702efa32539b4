// Shared by the GPU test files (Node's test runner against dist/): a tensor's values as float64 on the CPU, and the
// normwise relative error ‖a − b‖ / ‖b‖.
export async function f64(t) {
  const d = await t.to({ dtype: 'float64', device: 'cpu' });
  const a = await d.toArray();
  d.dispose();
  return a;
}

export function relErrOf(a, b) {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) num += (a[i] - b[i]) ** 2, den += b[i] ** 2;
  return Math.sqrt(num / den);
}
