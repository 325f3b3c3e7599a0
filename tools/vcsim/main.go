// Command vcsim runs govmomi's vCenter/ESXi simulator for the test suite.
//
// Debian ships the govmomi "simulator" package but no vcsim command, so this is a
// small launcher over it. It prints exactly one line, SDK_URL=https://HOST:PORT/sdk,
// once the server accepts connections, then serves until SIGTERM or SIGINT.
// The login is the simulator's default: user "user", password "pass".
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// listFlag accepts a flag given several times and/or as a comma separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// parseMethodDelay parses "Method:MS,Method2:MS".
func parseMethodDelay(v string) (map[string]int, error) {
	m := map[string]int{}
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		i := strings.LastIndex(item, ":")
		if i <= 0 {
			return nil, fmt.Errorf("bad -method-delay entry %q (want Method:MS)", item)
		}
		ms, err := strconv.Atoi(item[i+1:])
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("bad -method-delay entry %q: %v", item, err)
		}
		m[item[:i]] = ms
	}
	return m, nil
}

func main() {
	if err := run(); err != nil {
		log.Printf("vcsim: %v", err)
		os.Exit(1)
	}
}

// run is main without os.Exit, so that deferred clean-ups run on errors too.
func run() error {
	var (
		kind        = flag.String("model", "vpx", "inventory model: vpx (vCenter) or esx (standalone ESXi host)")
		clusters    = flag.Int("cluster", 2, "vpx: number of clusters in DC0")
		hosts       = flag.Int("host", 3, "vpx: number of hosts per cluster")
		standalone  = flag.Int("standalone-host", 0, "vpx: number of standalone hosts")
		vms         = flag.Int("vm", 0, "VMs per resource pool (cluster) or standalone host")
		listen      = flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port)")
		idle        = flag.Duration("idle-timeout", 0, "expire sessions idle for this long (0: never)")
		delay       = flag.Int("delay", 0, "milliseconds added to every SOAP call")
		methodDelay = flag.String("method-delay", "", "extra milliseconds per method, e.g. AddDVPortgroup_Task:200,AddPortGroup:100")
		wsdlDir     = flag.String("wsdl-dir", "", "serve every file of this directory under /sdk/<name>")
		pidfile     = flag.String("pidfile", "", "write the process id to this file")
		username    = flag.String("username", "user", "the only user name that may log in")
		password    = flag.String("password", "pass", "its password (checked, as by a real vCenter)")
		extraDVS    listFlag
		extraVSw    listFlag
	)
	flag.Var(&extraDVS, "extra-dvs", "vpx: extra distributed switch whose members are all cluster hosts (repeatable or comma list)")
	flag.Var(&extraVSw, "extra-vswitch", "extra standard vSwitch added to every host (repeatable or comma list)")
	flag.Parse()

	// The simulator logs every fault; keep its log on stderr and stdout for SDK_URL only.
	log.SetOutput(os.Stderr)

	delays, err := parseMethodDelay(*methodDelay)
	if err != nil {
		return err
	}

	var model *simulator.Model
	switch *kind {
	case "vpx":
		model = simulator.VPX()
		model.Cluster = *clusters
		model.ClusterHost = *hosts
		model.Host = *standalone
	case "esx":
		model = simulator.ESX()
		if len(extraDVS) > 0 {
			return fmt.Errorf("-extra-dvs needs -model vpx: an ESXi host has no distributed switches of its own")
		}
	default:
		return fmt.Errorf("unknown -model %q (want vpx or esx)", *kind)
	}
	model.Machine = *vms

	simulator.SessionIdleTimeout = *idle

	if err := model.Create(); err != nil {
		return fmt.Errorf("creating the %s model: %v", *kind, err)
	}
	defer model.Remove() // the model's datastores live in temporary directories

	// Extra inventory goes through the simulator's own SOAP methods, in process,
	// so that it looks exactly like what a client would have created.
	if err := addExtras(model, extraDVS, extraVSw); err != nil {
		return err
	}

	// Model.Create() starts applying the delay config once the model is built;
	// setting it only now keeps our own set-up calls above undelayed too.
	model.DelayConfig.Delay = *delay
	model.DelayConfig.MethodDelay = delays

	model.Service.TLS = new(tls.Config)
	// A URL user other than the package's DefaultLogin makes the simulator
	// check both name and password, as a real vCenter does; with DefaultLogin
	// (or none) it accepts any non-empty password.
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}

	if *wsdlDir != "" {
		if err := serveDir(model.Service, *wsdlDir); err != nil {
			return err
		}
	}

	server := model.Service.NewServer()

	if *pidfile != "" {
		if err := ioutil.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			server.Close()
			return err
		}
		defer os.Remove(*pidfile)
	}

	// Subscribe before announcing readiness, so a signal sent right after the
	// SDK_URL line is never lost.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	u := url.URL{Scheme: server.URL.Scheme, Host: server.URL.Host, Path: server.URL.Path}
	fmt.Fprintf(os.Stdout, "SDK_URL=%s\n", u.String())
	_ = os.Stdout.Sync()

	s := <-sig
	log.Printf("vcsim: %s received, shutting down", s)
	signal.Stop(sig)

	// Close waits for requests in flight; a client stuck in WaitForUpdates
	// (a long poll lasts up to its maxWaitSeconds) must not keep us alive:
	// whoever stops a simulator is done with it.
	done := make(chan struct{})
	go func() { server.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		log.Printf("vcsim: requests still running after 2s, exiting anyway")
	}
	return nil
}

// serveDir serves each regular file of dir as /sdk/<name>; oslo.vmware (suds)
// fetches /sdk/vimService.wsdl from the server it talks to.
func serveDir(svc *simulator.Service, dir string) error {
	entries, err := ioutil.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("-wsdl-dir: %v", err)
	}
	for _, e := range entries {
		if !e.Mode().IsRegular() {
			continue
		}
		file := filepath.Join(dir, e.Name())
		svc.HandleFunc("/sdk/"+e.Name(), func(w http.ResponseWriter, r *http.Request) {
			switch filepath.Ext(file) {
			case ".wsdl", ".xsd", ".xml":
				w.Header().Set("Content-Type", "text/xml; charset=utf-8")
			}
			http.ServeFile(w, r, file)
		})
	}
	return nil
}

// addExtras creates the extra distributed and standard switches asked for.
func addExtras(model *simulator.Model, dvsNames, vswitchNames []string) error {
	if len(dvsNames) == 0 && len(vswitchNames) == 0 {
		return nil
	}
	ctx := context.Background()

	// An in-process client: the Service is a soap.RoundTripper running as the
	// simulator's internal (fully privileged) session.
	c, err := vim25.NewClient(ctx, model.Service)
	if err != nil {
		return err
	}
	finder := find.NewFinder(c, false)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)

	if len(dvsNames) > 0 {
		var members []types.DistributedVirtualSwitchHostMemberConfigSpec
		clusters, err := finder.ClusterComputeResourceList(ctx, "*")
		if err != nil {
			return fmt.Errorf("-extra-dvs: %v", err)
		}
		for _, cl := range clusters {
			hs, err := cl.Hosts(ctx)
			if err != nil {
				return err
			}
			for _, h := range hs {
				members = append(members, types.DistributedVirtualSwitchHostMemberConfigSpec{
					Operation: string(types.ConfigSpecOperationAdd),
					Host:      h.Reference(),
				})
			}
		}
		folders, err := dc.Folders(ctx)
		if err != nil {
			return err
		}
		for _, name := range dvsNames {
			if err := createDVS(ctx, c, folders.NetworkFolder, name, members); err != nil {
				return fmt.Errorf("-extra-dvs %s: %v", name, err)
			}
		}
	}

	if len(vswitchNames) > 0 {
		hs, err := finder.HostSystemList(ctx, "*")
		if err != nil {
			return fmt.Errorf("-extra-vswitch: %v", err)
		}
		for _, h := range hs {
			ns, err := h.ConfigManager().NetworkSystem(ctx)
			if err != nil {
				return err
			}
			for _, name := range vswitchNames {
				spec := &types.HostVirtualSwitchSpec{NumPorts: 128}
				if err := ns.AddVirtualSwitch(ctx, name, spec); err != nil {
					return fmt.Errorf("-extra-vswitch %s on %s: %v", name, h.Name(), err)
				}
			}
		}
	}
	return nil
}

// createDVS creates a switch and then adds its hosts: the simulator's
// CreateDVS_Task ignores the members given in the create spec.
func createDVS(ctx context.Context, c *vim25.Client, folder *object.Folder, name string,
	members []types.DistributedVirtualSwitchHostMemberConfigSpec) error {
	spec := types.DVSCreateSpec{
		ConfigSpec: &types.VMwareDVSConfigSpec{DVSConfigSpec: types.DVSConfigSpec{Name: name}},
	}
	task, err := folder.CreateDVS(ctx, spec)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	if len(members) == 0 {
		return nil
	}
	dvs := object.NewDistributedVirtualSwitch(c, info.Result.(types.ManagedObjectReference))
	task, err = dvs.Reconfigure(ctx, &types.DVSConfigSpec{Host: members})
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}
