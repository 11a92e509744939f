src/w.h
