package main

import (
	"embed"
	"io/fs"
	"net/http"
)

// The admin page: static files, embedded so that the binary needs nothing
// beside it and no build step. The page holds no data and no secret: it
// reads /metrics and asks the HTTP API for the rest with the key the user
// types, so it shows nothing to someone without the key.
//
//go:embed adminui/index.html adminui/admin.js adminui/metrics.js adminui/admin.css
var adminFiles embed.FS

// serveAdminUI serves the page at / (--admin-ui).
func serveAdminUI(mux *http.ServeMux) {
	sub, err := fs.Sub(adminFiles, "adminui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Scripts and styles from this origin only; the page may not be
		// framed (its buttons act with the API key).
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
	mux.Handle("GET /{$}", h)
	for _, f := range []string{"/admin.js", "/metrics.js", "/admin.css"} {
		mux.Handle("GET "+f, h)
	}
}
