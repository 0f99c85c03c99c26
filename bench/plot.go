package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WriteIdlePlot draws an idle run's curve against the connections held:
// memory per connection (server user space, kernel slab for both ends) on
// the left, the probe connection's ping round trip on the right. The file
// name's extension picks the format: .png or .svg.
func WriteIdlePlot(path string, r *IdleResult) error {
	var mem, slab, rtt plotter.XYs
	var curve []IdleSample // the ramp, then where it settled
	for _, s := range r.Samples {
		if s.Phase == "ramp" {
			curve = append(curve, s)
		}
	}
	for _, s := range r.Samples {
		if s.Phase == "settle" {
			curve = append(curve, s) // the last one wins below
		}
	}
	if n := len(curve); n > 1 && curve[n-1].Phase == "settle" {
		i := n - 1
		for i > 0 && curve[i-1].Phase == "settle" {
			i--
		}
		curve = append(curve[:i], curve[n-1])
	}
	for _, s := range curve {
		// Per-connection figures over the first few hundred connections
		// are mostly the runtime's own steps; leave them out.
		if s.Connections < math.Max(500, 0.01*float64(r.Connections)) {
			continue
		}
		mem = append(mem, plotter.XY{X: s.Connections, Y: s.RSSPerConn})
		slab = append(slab, plotter.XY{X: s.Connections, Y: s.SlabPerConn})
		if !math.IsNaN(s.ProbeRTTMillis) {
			rtt = append(rtt, plotter.XY{X: s.Connections, Y: s.ProbeRTTMillis})
		}
	}
	if len(mem) == 0 {
		return fmt.Errorf("plot %s: no samples past the first connections (a run too short or too small to draw)", path)
	}
	left := plot.New()
	left.Title.Text = fmt.Sprintf("memory per connection (%d conns, %d server procs)", r.Connections, r.Servers)
	left.X.Label.Text = "connections held"
	left.Y.Label.Text = "bytes per connection"
	left.Y.Min = 0
	if err := addLines(left, line{"server user space (RSS growth)", mem, blue}, line{"kernel slab, both ends", slab, orange}); err != nil {
		return err
	}
	right := plot.New()
	right.Title.Text = "probe connection: ping round trip"
	right.X.Label.Text = "connections held"
	right.Y.Label.Text = "milliseconds"
	right.Y.Min = 0
	if len(rtt) > 0 {
		if err := addLines(right, line{"ping RTT", rtt, green}); err != nil {
			return err
		}
	}
	const w, h = 12 * vg.Inch, 4.5 * vg.Inch
	var c draw.Canvas
	var out io.WriterTo
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		s := vgsvg.New(w, h)
		c, out = draw.New(s), s
	case ".png":
		img := vgimg.New(w, h)
		c, out = draw.New(img), vgimg.PngCanvas{Canvas: img}
	default:
		return fmt.Errorf("plot %s: want a .png or .svg file name", path)
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadY: vg.Inch / 8, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8,
		PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	plots := [][]*plot.Plot{{left, right}}
	canvases := plot.Align(plots, tiles, c)
	left.Draw(canvases[0][0])
	right.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := out.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return f.Close()
}

// line is one named series of a plot.
type line struct {
	name string
	xys  plotter.XYs
	col  color.Color
}

var (
	blue   = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	orange = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	green  = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
)

// addLines draws each series with its legend entry, over a grid.
func addLines(p *plot.Plot, lines ...line) error {
	p.Add(plotter.NewGrid())
	for _, ln := range lines {
		l, pts, err := plotter.NewLinePoints(ln.xys)
		if err != nil {
			return err
		}
		l.Color, pts.Color = ln.col, ln.col
		l.Width = vg.Points(1.5)
		pts.Shape = draw.CircleGlyph{}
		pts.Radius = vg.Points(2)
		p.Add(l, pts)
		p.Legend.Add(ln.name, l, pts)
	}
	p.Legend.Top = true
	// Headroom over the highest point, so that the legend does not hide
	// the lines.
	top := 0.0
	for _, ln := range lines {
		for _, xy := range ln.xys {
			top = max(top, xy.Y)
		}
	}
	p.Y.Max = top * 1.35
	return nil
}
