fn main() {
    println!("propersim: under construction");
}
