"""Pure float64 solvers of the small ``T x T`` problems behind the methods: MGDA's min-norm point and the
Nash-MTL / FairGrad fixed point."""
