// Vite builds the dashboard into web/dist, which the jobq server embeds and
// serves at `/`. The build must be deterministic: CI rebuilds it and fails if
// the committed bundle differs.
import { defineConfig } from "vitest/config";

// `npm run dev` proxies the API to a running jobq server (grpc-web on the
// same port as gRPC), so the page can keep using window.location.origin.
const devServer = process.env.JOBQ_DEV_SERVER ?? "http://127.0.0.1:50051";

export default defineConfig({
  base: "./",
  esbuild: {
    jsx: "automatic",
    jsxImportSource: "preact",
    legalComments: "none",
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
  },
  server: {
    proxy: {
      "/jobq.v1.JobQueueService": { target: devServer, changeOrigin: true },
    },
  },
  test: {
    include: ["test/**/*.test.ts", "test/**/*.test.tsx"],
    environment: "node",
  },
});
