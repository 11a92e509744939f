src/zz.h
