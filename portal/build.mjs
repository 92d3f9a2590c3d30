// Builds the portal into one directory (default portal/dist): app.js (every module and viem,
// bundled and minified by esbuild, no legal comments), app.css, index.html and favicon.ico
// (drawn here, a 16×16 icon). The same sources and pinned versions give the same bytes:
// scripts/build-portal --check rebuilds into a temporary directory and compares.
//
// Usage: node portal/build.mjs [OUT_DIR]

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || join(here, 'dist'));
mkdirSync(out, { recursive: true });

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
  write: true,
};

await esbuild.build({
  ...common,
  entryPoints: ['src/main.js'],
  outfile: join(out, 'app.js'),
  format: 'iife',
  platform: 'browser',
  target: ['es2020'],
  // viem's optional WebSocket transport is never imported; nothing else needs Node.
  define: { 'process.env.NODE_ENV': '"production"' },
});

await esbuild.build({
  ...common,
  entryPoints: ['src/app.css'],
  outfile: join(out, 'app.css'),
});

writeFileSync(join(out, 'index.html'), readFileSync(join(here, 'src/index.html')));
writeFileSync(join(out, 'favicon.ico'), favicon());

/**
 * A 16×16 32-bit ICO: a rounded blue square with a white cross. BMP inside (not PNG), so the
 * bytes depend on nothing but this function.
 */
function favicon() {
  const size = 16;
  const pixels = Buffer.alloc(size * size * 4);
  const mask = Buffer.alloc(size * 4); // 1 bit per pixel, rows padded to 4 bytes: all opaque
  for (let row = 0; row < size; row += 1) {
    const y = size - 1 - row; // BMP rows go bottom-up
    for (let x = 0; x < size; x += 1) {
      const corner = Math.min(x, size - 1 - x) + Math.min(y, size - 1 - y) < 2;
      const cross = (x >= 6 && x <= 9 && y >= 3 && y <= 12) || (y >= 6 && y <= 9 && x >= 3 && x <= 12);
      const [b, g, r, a] = corner ? [0, 0, 0, 0] : cross ? [255, 255, 255, 255] : [0xa4, 0x57, 0x0b, 255];
      pixels.set([b, g, r, a], (row * size + x) * 4);
    }
  }
  const header = Buffer.alloc(40);
  header.writeUInt32LE(40, 0); // BITMAPINFOHEADER
  header.writeInt32LE(size, 4);
  header.writeInt32LE(size * 2, 8); // colour + mask
  header.writeUInt16LE(1, 12);
  header.writeUInt16LE(32, 14);
  header.writeUInt32LE(pixels.length + mask.length, 20);
  const image = Buffer.concat([header, pixels, mask]);
  const dir = Buffer.alloc(22);
  dir.writeUInt16LE(0, 0);
  dir.writeUInt16LE(1, 2); // icon
  dir.writeUInt16LE(1, 4); // one image
  dir.writeUInt8(size, 6);
  dir.writeUInt8(size, 7);
  dir.writeUInt8(0, 8);
  dir.writeUInt8(0, 9);
  dir.writeUInt16LE(1, 10); // planes
  dir.writeUInt16LE(32, 12); // bits per pixel
  dir.writeUInt32LE(image.length, 14);
  dir.writeUInt32LE(22, 18);
  return Buffer.concat([dir, image]);
}
