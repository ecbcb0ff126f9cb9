package app

import (
	"github.com/leviathan-dev/leviathan/services/internal/policy"
	"github.com/leviathan-dev/leviathan/services/internal/stage"
)

// The per-target guardrails, for the `leviathan config` command (the
// policy package is internal to services/).
type (
	// Policy is one target's value in the leviathan-config bucket.
	Policy = policy.Policy
	// PolicyStore reads and writes policies in that bucket.
	PolicyStore = policy.Store
)

// ErrPolicyInvalid marks a stored policy that does not parse.
var ErrPolicyInvalid = policy.ErrInvalid

// ConfigBucket is the KV bucket of the policies.
const ConfigBucket = stage.ConfigBucket
