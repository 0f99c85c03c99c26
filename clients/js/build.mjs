// The browser bundles: one file, a global `Wsd` (IIFE), plain and minified.
import { build } from "esbuild";

for (const minify of [false, true]) {
  await build({
    entryPoints: ["src/index.ts"],
    bundle: true,
    format: "iife",
    globalName: "Wsd",
    target: "es2020",
    minify,
    sourcemap: true,
    outfile: minify ? "dist/wsd.browser.min.js" : "dist/wsd.browser.js",
    logLevel: "warning",
  });
}
