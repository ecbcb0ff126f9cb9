package stage

import (
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Register announces a service over nats micro, so `nats micro ls` lists
// it and `nats micro stats` shows its counters. The service has a status
// endpoint on leviathan.svc.<name>.status; callers may add more endpoints.
func Register(nc *nats.Conn, name, version string, stats func() Stats) (micro.Service, error) {
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "leviathan-" + name,
		Version:     version,
		Description: "Leviathan " + name + " service",
		StatsHandler: func(*micro.Endpoint) any {
			return stats()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("register %s with nats micro: %w", name, err)
	}
	err = svc.AddEndpoint("status", micro.HandlerFunc(func(req micro.Request) {
		_ = req.RespondJSON(stats())
	}), micro.WithEndpointSubject("leviathan.svc."+name+".status"))
	if err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("register %s status endpoint: %w", name, err)
	}
	return svc, nil
}
