import { defineConfig } from "vite";

// The console is a static bundle that `sipmba` embeds and serves at `/`: no inline script (the
// server's Content-Security-Policy forbids it), hashed asset names under /assets/ (served as
// immutable), and no source maps in the binary.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    sourcemap: false,
    modulePreload: { polyfill: false },
    target: "es2022",
    chunkSizeWarningLimit: 500,
  },
});
