package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

const k8sDir = "deploy/k8s"

// k8sObjects are the manifests, decoded into their API types.
type k8sObjects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	pdbs        []*policyv1.PodDisruptionBudget
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// readK8s decodes every document of every .yaml file under deploy/k8s into
// the type its apiVersion and kind name, strictly: a field the type does
// not have (a typo, a wrong nesting, a field of a newer API) fails.
func readK8s(t *testing.T) k8sObjects {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root(t), k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	var o k8sObjects
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSeparator.Split(string(b), -1) {
			where := fmt.Sprintf("%s/%s, document %d", k8sDir, filepath.Base(f), i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if tm.APIVersion == "" && tm.Kind == "" {
				if strings.TrimSpace(stripComments(doc)) != "" {
					t.Fatalf("%s: no apiVersion and kind", where)
				}
				continue // comments only
			}
			var obj interface{ GetNamespace() string }
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				d := &appsv1.Deployment{}
				o.deployments, obj = append(o.deployments, d), d
			case "v1 Service":
				s := &corev1.Service{}
				o.services, obj = append(o.services, s), s
			case "v1 ConfigMap":
				c := &corev1.ConfigMap{}
				o.configMaps, obj = append(o.configMaps, c), c
			case "policy/v1 PodDisruptionBudget":
				p := &policyv1.PodDisruptionBudget{}
				o.pdbs, obj = append(o.pdbs, p), p
			case "autoscaling/v2 HorizontalPodAutoscaler":
				h := &autoscalingv2.HorizontalPodAutoscaler{}
				o.hpas, obj = append(o.hpas, h), h
			default:
				t.Fatalf("%s: %s %s: the test knows no such type; add it", where, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("%s: %v", where, err)
			}
			if ns := obj.GetNamespace(); ns != "" {
				t.Errorf("%s: namespace %q: the manifests are namespace-less (kubectl -n picks one)", where, ns)
			}
		}
	}
	if len(o.deployments) != 1 || len(o.services) != 1 || len(o.configMaps) != 1 || len(o.pdbs) != 1 || len(o.hpas) != 1 {
		t.Fatalf("want one Deployment, Service, ConfigMap, PodDisruptionBudget and HorizontalPodAutoscaler; have %d, %d, %d, %d, %d",
			len(o.deployments), len(o.services), len(o.configMaps), len(o.pdbs), len(o.hpas))
	}
	return o
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// The strict decoding above is a real schema check: it refuses what the
// API types do not have.
func TestK8sStrictDecodingRefusesUnknownFields(t *testing.T) {
	bad := "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 2\n  terminationGracePeriodSeconds: 45\n"
	if err := yaml.UnmarshalStrict([]byte(bad), &appsv1.Deployment{}); err == nil {
		t.Fatal("a pod field at the Deployment spec's level was accepted")
	}
}

// wsdContainer returns the Deployment's wsd container.
func wsdContainer(t *testing.T, d *appsv1.Deployment) *corev1.Container {
	t.Helper()
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == "wsd" {
			return c
		}
	}
	t.Fatalf("deployment %s has no container wsd", d.Name)
	return nil
}

// portNumber resolves a probe's or Service's port (a number or a container
// port's name).
func portNumber(t *testing.T, c *corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Errorf("no container port named %q", p.StrVal)
	return -1
}

// k8sEffectiveConfig runs the real wsd as the Deployment would: its args,
// the ConfigMap's files where they are mounted, and its literal env.
func k8sEffectiveConfig(t *testing.T, o k8sObjects, c *corev1.Container) map[string]any {
	t.Helper()
	pod := o.deployments[0].Spec.Template.Spec
	dir := t.TempDir()
	args := slices.Clone(c.Args)
	if len(c.Command) > 0 {
		t.Errorf("container wsd sets command %q: the image's ENTRYPOINT is wsd", c.Command)
	}
	mounted := 0
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm := o.configMaps[0]
			if v.ConfigMap.Name != cm.Name {
				t.Fatalf("volume %s mounts ConfigMap %q, the manifests have %q", v.Name, v.ConfigMap.Name, cm.Name)
			}
			for name, data := range cm.Data {
				local := filepath.Join(dir, name)
				if err := os.WriteFile(local, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
				for i, a := range args {
					if a == filepath.Join(m.MountPath, name) {
						args[i] = local
						mounted++
					}
				}
			}
		}
	}
	if mounted == 0 {
		t.Fatalf("the container's args %q name no file of ConfigMap %s", c.Args, o.configMaps[0].Name)
	}
	var env []string
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env = append(env, e.Name+"=pod-"+strings.ReplaceAll(e.ValueFrom.FieldRef.FieldPath, ".", "-"))
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env = append(env, e.Name+"=secret-value")
		default:
			env = append(env, e.Name+"="+e.Value)
		}
		if !strings.HasPrefix(e.Name, "WSD_") {
			t.Errorf("env %s is not one of wsd's WSD_* variables", e.Name)
		}
	}
	return effectiveConfigEnv(t, env, args...)
}

// The Deployment, Service, PodDisruptionBudget and HPA agree with each
// other, with the image, and with what the real wsd does with the args
// and the ConfigMap.
func TestK8sManifests(t *testing.T) {
	o := readK8s(t)
	d := o.deployments[0]
	pod := d.Spec.Template.Spec
	c := wsdContainer(t, d)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	podLabels := d.Spec.Template.Labels
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(podLabels)) {
		t.Errorf("the Deployment's selector %v does not match its pods' labels %v", d.Spec.Selector, podLabels)
	}

	// The image: a tag, not latest.
	img := c.Image
	if i := strings.LastIndex(img, "/"); i >= 0 {
		img = img[i+1:]
	}
	if _, tag, ok := strings.Cut(img, ":"); !ok && !strings.Contains(img, "@") || tag == "latest" {
		t.Errorf("image %q: pin a tag (not :latest) or a digest", c.Image)
	}

	// What wsd runs with.
	cfg := k8sEffectiveConfig(t, o, c)
	adminHost, adminPort, _ := strings.Cut(cfg["admin"].(string), ":")
	_, wsPort, _ := strings.Cut(cfg["listen"].(string), ":")
	if adminHost != "0.0.0.0" && adminHost != "" {
		t.Errorf("admin %v: the kubelet's probes cannot reach a loopback-only admin listener", cfg["admin"])
	}
	if cfg["node-id"] != "pod-metadata-name" {
		t.Errorf("node-id %v: want the pod's name from WSD_NODE_ID", cfg["node-id"])
	}
	containerPort := map[string]string{}
	for _, p := range c.Ports {
		containerPort[p.Name] = strconv.Itoa(int(p.ContainerPort))
	}
	if containerPort["ws"] != wsPort || containerPort["admin"] != adminPort {
		t.Errorf("container ports %v, wsd listens on %s and %s (admin)", containerPort, wsPort, adminPort)
	}

	// Probes on the admin listener.
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s probe over HTTP", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || strconv.Itoa(int(portNumber(t, c, p.probe.HTTPGet.Port))) != adminPort {
			t.Errorf("%s probe GET %s on port %v, want %s on the admin port %s",
				p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, adminPort)
		}
	}

	// Stopping: a preStop sleep (no shell in the image), then SIGTERM and
	// the drain, all within the grace period.
	var sleep int64
	switch ps := c.Lifecycle; {
	case ps == nil || ps.PreStop == nil:
		t.Error("no preStop")
	case ps.PreStop.Exec != nil:
		t.Error("preStop exec: the distroless image has no shell or kill")
	case ps.PreStop.Sleep == nil || ps.PreStop.Sleep.Seconds <= 0:
		t.Error("preStop is not a sleep")
	default:
		sleep = ps.PreStop.Sleep.Seconds
	}
	drain := durationKey(t, cfg, "drain-timeout")
	need := time.Duration(sleep)*time.Second + drain + adminShutdown
	var grace time.Duration // the default 30 s is as short as a drain
	if g := pod.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if grace <= need {
		t.Errorf("terminationGracePeriodSeconds %v: want more than preStop %ds + drain-timeout %v + admin shutdown %v",
			grace, sleep, drain, adminShutdown)
	} else {
		t.Logf("grace %v > preStop %ds + drain %v + admin %v", grace, sleep, drain, adminShutdown)
	}

	// Security: non-root as the image's user, no privileges, read-only root.
	psc, csc := pod.SecurityContext, c.SecurityContext
	if psc == nil || csc == nil {
		t.Fatal("pod or container securityContext missing")
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if uid := imageUID(t); psc.RunAsUser == nil || *psc.RunAsUser != uid {
		t.Errorf("runAsUser %v, want the image's USER %d", psc.RunAsUser, uid)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("seccompProfile is not RuntimeDefault")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(csc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v, want drop ALL and add none", csc.Capabilities)
	}

	// Sysctls: only the kubelet's safe set (any other keeps the pod from
	// starting on a default kubelet), at the profile's values.
	safe := []string{"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
		"net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports",
		"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
		"net.ipv4.tcp_keepalive_probes"}
	var names []string
	for _, s := range psc.Sysctls {
		names = append(names, s.Name)
		if !slices.Contains(safe, s.Name) {
			t.Errorf("sysctl %s is not in the kubelet's safe set", s.Name)
		}
		if w, ok := profileWant[s.Name]; !ok || w != s.Value {
			t.Errorf("sysctl %s = %q, the profile has %q", s.Name, s.Value, w)
		}
	}
	if !slices.Contains(names, "net.ipv4.ip_local_port_range") {
		t.Errorf("sysctls %q: want net.ipv4.ip_local_port_range", names)
	}

	// The Service: the WebSocket port of these pods, not the admin port.
	svc := o.services[0]
	if !matchesAll(labels.Set(podLabels), svc.Spec.Selector) {
		t.Errorf("Service selector %v does not match the pods' labels %v", svc.Spec.Selector, podLabels)
	}
	for _, p := range svc.Spec.Ports {
		switch strconv.Itoa(int(portNumber(t, c, p.TargetPort))) {
		case wsPort:
		case adminPort:
			t.Errorf("Service port %s exposes the admin listener", p.Name)
		default:
			t.Errorf("Service port %s targets %v, not a wsd port", p.Name, p.TargetPort.String())
		}
	}

	// The PodDisruptionBudget covers these pods.
	pdb := o.pdbs[0]
	if s, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || s.Empty() || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("the PodDisruptionBudget's selector %v does not match the pods", pdb.Spec.Selector)
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Error("the PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
	}

	// The HPA scales this Deployment on a Pods metric, per-pod average.
	h := o.hpas[0]
	if r := h.Spec.ScaleTargetRef; r.APIVersion != "apps/v1" || r.Kind != "Deployment" || r.Name != d.Name {
		t.Errorf("HPA scales %+v, not Deployment %s", r, d.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < *d.Spec.Replicas || h.Spec.MaxReplicas <= *h.Spec.MinReplicas {
		t.Errorf("HPA replicas %v..%d", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	if len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].Type != autoscalingv2.PodsMetricSourceType || h.Spec.Metrics[0].Pods == nil {
		t.Fatalf("HPA metrics %+v: want one Pods metric", h.Spec.Metrics)
	}
	m := h.Spec.Metrics[0].Pods
	if m.Target.Type != autoscalingv2.AverageValueMetricType || m.Target.AverageValue == nil || m.Target.AverageValue.Value() <= 0 {
		t.Errorf("HPA target %+v: want a positive AverageValue", m.Target)
	} else {
		t.Logf("HPA: %s averaging %d per pod", m.Metric.Name, m.Target.AverageValue.Value())
	}
}

// imageUID is the uid of the Dockerfile's final USER.
func imageUID(t *testing.T) int64 {
	t.Helper()
	stages := parseDockerfile(t, string(readFile(t, dockerfile)))
	users := stages[len(stages)-1].all("USER")
	if len(users) == 0 {
		t.Fatalf("%s: no USER", dockerfile)
	}
	uid, _, _ := strings.Cut(users[len(users)-1].args, ":")
	n, err := strconv.ParseInt(uid, 10, 64)
	if err != nil {
		t.Fatalf("%s: USER %s is not numeric", dockerfile, users[len(users)-1].args)
	}
	return n
}

// The HPA's metric is a gauge a real wsd exports on /metrics, with no
// labels of its own (prometheus-adapter adds pod and namespace).
func TestK8sHPAMetricIsExported(t *testing.T) {
	o := readK8s(t)
	name := o.hpas[0].Spec.Metrics[0].Pods.Metric.Name
	p := wsdproc.Start(t)
	exp := scrape(t, p.Admin)
	labels, ok := exp[name]
	if !ok {
		t.Fatalf("the HPA scales on %s, which wsd's /metrics does not have", name)
	}
	if len(labels) > 0 {
		t.Errorf("%s has labels %v: the adapter's per-pod value would need a sum", name, labels)
	}
	if o.hpas[0].Spec.Metrics[0].Pods.Metric.Selector != nil {
		t.Errorf("the HPA selects series of %s by label, which it has none of", name)
	}
	if p.Metric(t, name) != 0 {
		t.Errorf("%s = %d on an idle wsd", name, p.Metric(t, name))
	}
}

// matchesAll reports whether every pair of a Service selector is in l.
func matchesAll(l labels.Set, sel map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if l[k] != v {
			return false
		}
	}
	return true
}
