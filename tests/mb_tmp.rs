use candle_core::{Device, Tensor, DType};
fn cpu() -> f64 { let s = std::fs::read_to_string("/proc/self/stat").unwrap(); let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect(); (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap())/100.0 }
#[test]
fn mb() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (120, 576), &d).unwrap();
    let w = Tensor::randn(0f32, 1.0, (1536, 576), &d).unwrap();
    let wt = w.t().unwrap().contiguous().unwrap();
    for name in ["t()", "contig"] {
        let c0 = cpu(); let t0 = std::time::Instant::now();
        for _ in 0..50 { let _ = if name=="t()" { x.matmul(&w.t().unwrap()).unwrap() } else { x.matmul(&wt).unwrap() }; }
        println!("{name}: wall {:.3}s cpu {:.3}s per 50", t0.elapsed().as_secs_f64(), cpu()-c0);
    }
    let e = Tensor::randn(0f32, 1.0, (49152, 576), &d).unwrap();
    let h = Tensor::randn(0f32, 1.0, (2, 15, 576), &d).unwrap();
    let c0 = cpu(); let t0 = std::time::Instant::now();
    for _ in 0..5 { let _ = h.broadcast_matmul(&e.t().unwrap()).unwrap(); }
    println!("head bmm: wall {:.3}s cpu {:.3}s per 5", t0.elapsed().as_secs_f64(), cpu()-c0);
    let c0 = cpu(); let t0 = std::time::Instant::now();
    for _ in 0..5 { let _ = h.reshape((30,576)).unwrap().matmul(&e.t().unwrap()).unwrap(); }
    println!("head 2d: wall {:.3}s cpu {:.3}s per 5", t0.elapsed().as_secs_f64(), cpu()-c0);
    let _ = DType::F32;
}
