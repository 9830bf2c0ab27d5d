"""The client side: a Computer against real and lying daemons, processes, transports, deadlines."""
