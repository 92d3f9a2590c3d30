// RFC 8785 (JCS) canonical JSON: object members sorted by their names' UTF-16 code units
// (JavaScript's default sort order), numbers in ECMAScript's shortest round-trip form, strings
// with JSON's minimal escaping (JSON.stringify's, which is JCS's). The audit trail's leaves are
// keccak256 of this form of each AuditEvent.

export function canonicalize(value) {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new Error('JCS cannot represent a non-finite number');
      return JSON.stringify(value); // -0 becomes "0", as RFC 8785 asks
    case 'string':
      return JSON.stringify(value);
    case 'object':
      if (Array.isArray(value)) return `[${value.map(canonicalize).join(',')}]`;
      return `{${Object.keys(value)
        .filter((key) => value[key] !== undefined)
        .sort()
        .map((key) => `${JSON.stringify(key)}:${canonicalize(value[key])}`)
        .join(',')}}`;
    default:
      throw new Error(`JCS cannot represent a ${typeof value}`);
  }
}
